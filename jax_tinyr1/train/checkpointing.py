"""Training checkpoints with orbax: everything needed to resume exactly.

Each step directory holds the trainable parameters, the optimizer state (both restored with
their shardings) and a JSON item with the step, the RNG key data, the data iterator state and
the config. Saves are asynchronous; orbax writes into a temporary directory and renames it
when complete, so a run killed mid-save restarts from the previous complete checkpoint. The
last `keep_last` are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class TrainCheckpointer:
    def __init__(self, directory: Path, keep_last: int = 3, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last, enable_async_checkpointing=asynchronous, create=True
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def set_aside(self, step: int) -> Path:
        """Move a step's directory out of the manager's sight (a damaged checkpoint is kept for
        inspection, never deleted) and forget it."""
        source = self.directory / str(step)
        target = self.directory / f"damaged-{step}"
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.directory / f"damaged-{step}-{suffix}"
        if jax.process_index() == 0 and source.exists():
            source.rename(target)
        self.manager.reload()
        return target

    def save(self, step: int, trainable, opt_state, meta: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardSave(trainable),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore(self, step: int, trainable_like, opt_state_like):
        """(trainable, opt_state, meta) with the shardings of the given templates."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(_abstract(trainable_like)),
                opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["trainable"], restored["opt_state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
