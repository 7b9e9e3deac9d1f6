"""What every stage's trainer holds: the sharded trainable and frozen parameters, the
optimizer state, the compiled vision encode and update, and the moves between this
process's rows and the global batch. A stage adds its loss (`make_update`) and its step.

Several processes may drive one mesh: each passes its own block of the global batch; the
small host-side pieces (prompt ids, labels, sampled tokens) are gathered so that every
process holds the same values, and the videos go straight to the devices of the process
that read them (see `multihost`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_tinyr1.model.sharding import batch_shardings, make_mesh
from jax_tinyr1.update import multihost
from jax_tinyr1.update.optimizer import OptimizerConfig, make_optimizer, opt_state_shardings
from jax_tinyr1.update.params import merge_params, param_shardings, split_params
from jax_tinyr1.update.programs import StepProgram
from jax_tinyr1.update.step import jit_update

DROPOUT_STREAM = 3  # folded into a step's key for the adapters' dropout (GRPO splits the key in two)


class Trainer:
    def __init__(
        self,
        model: nnx.Module,
        *,
        trainable: tuple[str, ...],
        optimizer: OptimizerConfig,
        pad_id: int,
        programs: Callable[..., dict[str, StepProgram]],
        mesh: Mesh | None = None,
    ):
        """`programs(graphdef, optimizer, mesh)`: the stage's step programs (update/programs.py),
        the same list `--plan` compiles; the trainer jits them."""
        self.trainable_parts, self.pad_id = trainable, pad_id
        self.mesh = mesh or make_mesh(devices=jax.devices()[:1])
        state = nnx.state(model)
        self.graphdef, trainable_params, frozen = split_params(model, trainable)
        self.shardings = {
            "trainable": param_shardings(state, self.mesh, trainable),
            "frozen": param_shardings(state, self.mesh, trainable, frozen=True),
        }
        self.trainable = jax.device_put(trainable_params, self.shardings["trainable"])
        self.frozen = jax.device_put(frozen, self.shardings["frozen"])
        self.optimizer = make_optimizer(optimizer)
        abstract_opt = jax.eval_shape(self.optimizer.init, self.trainable)
        self.shardings["opt_state"] = opt_state_shardings(
            self.optimizer, abstract_opt, self.shardings["trainable"], self.mesh
        )
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings["opt_state"])(self.trainable)
        self.programs = programs(self.graphdef, self.optimizer, self.mesh)
        self._encode = jax.jit(self.programs["encode"].fn)
        self._update = self.programs["update"].fn  # update(trainable, frozen, opt_state, batch), jitted on first use
        self._jitted_update = None
        self._reshard_cache = {}
        self.step_count = 0
        llm = model.config.llm
        self.dropout_rate = llm.lora_dropout if llm.lora_rank else 0.0  # the adapters' (model/lora.py)

    def dropout_keys(self, key: jax.Array, rows: int) -> jax.Array | None:
        """The adapters' dropout keys of a step's rows ([R, 2] key data, a function of the step's
        key: a resumed run draws the same masks), or None without dropout."""
        if not self.dropout_rate:
            return None
        keys = jax.random.split(jax.random.fold_in(key, DROPOUT_STREAM), rows)
        return self.to_global(np.asarray(jax.random.key_data(keys)))

    def model_params(self) -> dict:
        """The whole model's parameter tree: trainable and frozen parts together."""
        return merge_params(self.frozen, self.trainable)

    def model(self) -> nnx.Module:
        """The whole model with the current parameters."""
        return nnx.merge(self.graphdef, self.model_params())

    def encode(self, pixels_bfyx3) -> jax.Array:
        """The batch's vision input (see `params.encode_program`) of global frames."""
        with jax.set_mesh(self.mesh):  # activations follow the data-parallel axes
            return self._encode(self.trainable, self.frozen, pixels_bfyx3)

    def update(self, batch):
        if self._jitted_update is None:
            self._jitted_update = jit_update(self._update, self.mesh, self.shardings, batch)
        batch = self._reshard(batch, batch_shardings(self.mesh, batch))
        with jax.set_mesh(self.mesh):
            self.trainable, self.opt_state, metrics = self._jitted_update(
                self.trainable, self.frozen, self.opt_state, batch
            )
        return metrics

    def _reshard(self, tree, shardings):
        """Place (possibly multi-host) arrays on the given shardings (a no-op where they are);
        one compiled identity per sharding layout."""
        move = self._reshard_cache.get(shardings)
        if move is None:
            move = self._reshard_cache[shardings] = jax.jit(lambda t: t, out_shardings=shardings)
        return move(tree)

    def global_rows(self, *local: np.ndarray, pad_value: int = 0) -> list[np.ndarray]:
        """The whole batch's rows of per-process token arrays (right padded to one width)."""
        return [multihost.allgather_rows(multihost.pad_columns(x, pad_value)) for x in local]

    def to_global(self, full: np.ndarray) -> jax.Array:
        """A value every process holds whole, as a global array sharded like the batch."""
        return multihost.replicated_to_global(self.mesh, full)

    def encode_local(self, pixels_bfyx3: np.ndarray) -> jax.Array:
        """The vision input of this process's frames, within the global batch."""
        return self.encode(multihost.global_batch(self.mesh, pixels_bfyx3))
