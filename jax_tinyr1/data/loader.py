"""The grain input pipeline: records -> seeded shuffle per epoch -> this process's block of each
global batch -> decode and preprocess in worker processes -> batches of prompts.

Workers return either a sample or a description of why it could not be made; the main
process applies the bad-input policy (error or skip-and-count) and fills batches. Its state
(the grain iterator's position after the last consumed sample, plus the skip counts) is
saved at batch boundaries, so a restored loader yields exactly the batches an
uninterrupted one would, with any number of workers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import absl.flags
import grain
import numpy as np

from jax_tinyr1.data.formats import Record
from jax_tinyr1.data.policy import BadInputPolicy, DataError, resolve_inside
from jax_tinyr1.data.preprocess import preprocess_frames
from jax_tinyr1.data.template import eos_id, grpo_question, pad_id, prompt_ids
from jax_tinyr1.data.video import VideoDecodeError, read_frames
from jax_tinyr1.derived import derived


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """The `data` section of a run config, plus what the run derives from the model."""

    root: str = ""  # the data root: annotation files and videos; no path may leave it
    train: str = "train.jsonl"  # annotation file, relative to root
    batch_size: int = 1  # prompts per batch (per process)
    seed: int = 0
    num_workers: int = 0
    bad_input: str = "error"  # or "skip"
    # The spliced prompt length (text + visual tokens) every batch is padded to; a longer
    # prompt is bad input. 0: pad to a multiple of `pad_multiple` instead. One width means
    # one compiled program per stage, and the memory plan needs it.
    prompt_tokens: int = 0
    response_tokens: int = 0  # SFT: responses (with their EOS) padded to this; longer is bad input
    num_frames: int = derived(16, "model: num_frames")
    image_size: int = derived(384, "model: vision.image_size")
    visual_tokens: int = derived(0, "model: connector.num_queries")
    num_epochs: int = derived(1, "run.epochs")
    reasoning_prompt: bool = derived(True, "the stage (GRPO: yes, SFT: no)")
    pad_multiple: int = 32  # pad token lengths up to a multiple: a few shapes, a few compilations

    def __post_init__(self):
        if self.batch_size <= 0 or self.num_frames <= 0 or self.image_size <= 0 or self.num_epochs <= 0:
            raise ValueError("data.batch_size (and the frame count, image size, epochs) must be positive")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.prompt_tokens < 0 or self.response_tokens < 0 or self.pad_multiple < 1:
            raise ValueError("data.prompt_tokens and data.response_tokens must be >= 0, data.pad_multiple >= 1")

    @property
    def text_width(self) -> int | None:
        """Prompt ids per row when `prompt_tokens` is set (the placeholder stands for the
        visual block)."""
        return self.prompt_tokens - self.visual_tokens + 1 if self.prompt_tokens else None


class MakeSample:
    """Record -> sample dict (runs in the workers; picklable)."""

    def __init__(self, data_root: Path, tokenizer, config: LoaderConfig):
        self.data_root, self.tokenizer, self.config = Path(data_root), tokenizer, config

    def __call__(self, record: Record) -> dict[str, Any]:
        c = self.config
        # The text first: a prompt or response too long for the run costs no video decode.
        question = grpo_question(record.question) if c.reasoning_prompt else record.question
        ids = np.asarray(prompt_ids(self.tokenizer, question), np.int32)
        if c.text_width is not None and len(ids) > c.text_width:
            spliced = len(ids) - 1 + c.visual_tokens
            return {
                "error": f"{record.source}: prompt of {spliced} tokens exceeds data.prompt_tokens={c.prompt_tokens}",
                "kind": "annotation",
            }
        response = None
        if record.response is not None:  # SFT: " {response}<|endoftext|>" is supervised
            response = self.tokenizer(" " + record.response, add_special_tokens=False)["input_ids"]
            response = np.asarray([*response, eos_id(self.tokenizer)], np.int32)
            if c.response_tokens and len(response) > c.response_tokens:
                return {
                    "error": f"{record.source}: response of {len(response)} tokens exceeds "
                    f"data.response_tokens={c.response_tokens}",
                    "kind": "annotation",
                }
        try:
            path = resolve_inside(self.data_root, record.video)
            frames = read_frames(path, c.num_frames)
        except (DataError, VideoDecodeError) as e:
            kind = "path" if isinstance(e, DataError) else "video"
            return {"error": f"{record.source}: {e}", "kind": kind}
        sample = {
            "pixels": preprocess_frames(frames, c.image_size),
            "prompt_ids": ids,
            "answer": record.answer,
            "id": record.id,
        }
        if response is not None:
            sample["response_ids"] = response
        return sample


def collate(
    samples: list[dict[str, Any]],
    pad_id: int,
    multiple: int = 1,
    prompt_width: int | None = None,
    response_width: int | None = None,
) -> dict[str, Any]:
    """Right-pad prompt and response ids to the given widths (else to a multiple of
    `multiple`); stack pixels."""
    ids, mask = pad_rows([s["prompt_ids"] for s in samples], pad_id, multiple, prompt_width)
    batch = {
        "prompt_ids": ids,
        "prompt_mask": mask,
        "pixels": np.stack([s["pixels"] for s in samples]),
        "answers": [s["answer"] for s in samples],
        "ids": [s["id"] for s in samples],
    }
    if all("response_ids" in s for s in samples):
        batch["response_ids"], batch["response_mask"] = pad_rows(
            [s["response_ids"] for s in samples], pad_id, multiple, response_width
        )
    return batch


def pad_rows(rows: list, pad_id: int, multiple: int = 1, width: int | None = None):
    """(ids, mask) [rows, width] of right-padded token rows; `width` None: the longest row
    rounded up to a multiple of `multiple`."""
    width = width or -(-max(len(r) for r in rows) // multiple) * multiple
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def process_order(n: int, config: LoaderConfig, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """The record indices this process reads, in order, for all epochs.

    Each epoch is a fresh seeded permutation cut into global batches of `batch_size *
    process_count` (a partial last batch is dropped); process p takes the p-th block of
    `batch_size` of each. The global batch, blocks laid end to end in process order, is then
    the same whatever the number of processes, which lets a multi-host run reproduce a
    single-host one."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    b, global_batch = config.batch_size, config.batch_size * process_count
    blocks = []
    for epoch in range(config.num_epochs):
        permutation = np.random.default_rng([config.seed, epoch]).permutation(n)
        steps = n // global_batch
        per_step = permutation[: steps * global_batch].reshape(steps, process_count, b)
        blocks.append(per_step[:, process_index].reshape(-1))
    return np.concatenate(blocks)


class VideoQALoader:
    """Iterates batches; `get_state()` / `set_state()` at batch boundaries."""

    def __init__(
        self,
        records: list[Record],
        data_root: Path,
        tokenizer,
        config: LoaderConfig,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if not records:
            raise DataError("the data set has no usable records")
        self.config, self.policy = config, BadInputPolicy(config.bad_input)
        self.pad_id = pad_id(tokenizer)
        order = process_order(len(records), config, process_index, process_count)
        if not len(order):
            raise DataError(f"{len(records)} records fill no global batch of {config.batch_size} x {process_count}")
        dataset = grain.MapDataset.source([records[i] for i in order]).map(MakeSample(data_root, tokenizer, config))
        iter_dataset = dataset.to_iter_dataset()
        if config.num_workers > 0:
            # grain's workers read absl flags; an entry point that never parsed them would fail.
            if not absl.flags.FLAGS.is_parsed():
                absl.flags.FLAGS.mark_as_parsed()
            iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
        self._iterator = iter(iter_dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        samples = []
        while len(samples) < self.config.batch_size:
            sample = next(self._iterator)  # StopIteration ends the epoch(s); a partial batch is dropped
            if "error" in sample:
                self.policy.bad(sample["kind"], sample["error"])
                continue
            samples.append(sample)
        c = self.config
        return collate(samples, self.pad_id, c.pad_multiple, c.text_width, c.response_tokens or None)

    def close(self) -> None:
        """Stop worker processes (also done when the loader is garbage collected)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def get_state(self) -> dict[str, Any]:
        return {
            "grain": json.loads(json.dumps(self._iterator.get_state(), default=_jsonable)),
            "skipped": dict(self.policy.counts),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state["grain"])
        self.policy.counts.clear()
        self.policy.counts.update(state["skipped"])


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"loader state holds a {type(value).__name__}")
