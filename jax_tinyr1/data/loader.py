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
from typing import Any, NamedTuple

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
    # The spliced prompt length (text + visual tokens) every batch is padded to. 0: measured
    # from the records before step 1 (the smallest multiple of `pad_multiple` that holds them
    # all); set and too short for a record: the run stops before step 1 naming it (see
    # `fit_widths`). One width means one compiled program per stage; the plan needs it set.
    prompt_tokens: int = 0
    response_tokens: int = 0  # SFT: responses (with their EOS) padded to this; 0: measured likewise
    num_frames: int = derived(16, "model: num_frames")
    image_size: int = derived(384, "model: vision.image_size")
    visual_tokens: int = derived(0, "model: connector.num_queries")
    num_epochs: int = derived(1, "run.epochs")
    reasoning_prompt: bool = derived(True, "the stage (GRPO: yes, SFT: no)")
    pad_multiple: int = 32  # measured widths are rounded up to a multiple of this
    # Under `bad_input: skip`, a bad sample is replaced (see `replacement_candidates`); more bad
    # samples than this fraction of the run's planned samples stops it at a step boundary.
    max_bad_fraction: float = 0.05

    def __post_init__(self):
        if self.batch_size <= 0 or self.num_frames <= 0 or self.image_size <= 0 or self.num_epochs <= 0:
            raise ValueError("data.batch_size (and the frame count, image size, epochs) must be positive")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.prompt_tokens < 0 or self.response_tokens < 0 or self.pad_multiple < 1:
            raise ValueError("data.prompt_tokens and data.response_tokens must be >= 0, data.pad_multiple >= 1")
        if not 0 <= self.max_bad_fraction < 1:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}")

    @property
    def text_width(self) -> int | None:
        """Prompt ids per row when `prompt_tokens` is set (the placeholder stands for the
        visual block)."""
        return self.prompt_tokens - self.visual_tokens + 1 if self.prompt_tokens else None


class Slot(NamedTuple):
    """A place in the global order: the epoch, the position in it, the record scheduled there."""

    epoch: int
    position: int
    record: Record


class MakeSample:
    """Slot -> sample dict (runs in the workers; picklable); a bad sample comes back as
    {"error", "kind", "slot"} for the loader to count and replace."""

    def __init__(self, data_root: Path, tokenizer, config: LoaderConfig):
        self.data_root, self.tokenizer, self.config = Path(data_root), tokenizer, config

    def __call__(self, slot: Slot) -> dict[str, Any]:
        sample = self.make(slot.record)
        sample["slot"] = (slot.epoch, slot.position)
        return sample

    def make(self, record: Record) -> dict[str, Any]:
        c = self.config
        # The text first: a prompt or response too long for the run costs no video decode
        # (`fit_widths` has measured every record before step 1, so this is a guard for a
        # loader built without it).
        ids = np.asarray(record_prompt_ids(self.tokenizer, record, c.reasoning_prompt), np.int32)
        if c.text_width is not None and len(ids) > c.text_width:
            spliced = len(ids) - 1 + c.visual_tokens
            return {
                "error": f"{record.source}: prompt of {spliced} tokens exceeds data.prompt_tokens={c.prompt_tokens}",
                "kind": "annotation",
            }
        response = None
        if record.response is not None:
            response = np.asarray(record_response_ids(self.tokenizer, record), np.int32)
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
            kind = "video" if isinstance(e, VideoDecodeError) else "path"
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


def record_prompt_ids(tokenizer, record: Record, reasoning_prompt: bool) -> list[int]:
    """The prompt ids of a record as its stage asks it (GRPO appends the format instruction)."""
    return prompt_ids(tokenizer, grpo_question(record.question) if reasoning_prompt else record.question)


def record_response_ids(tokenizer, record: Record) -> list[int]:
    """SFT's supervised ids: " {response}<|endoftext|>"."""
    ids = tokenizer(" " + record.response, add_special_tokens=False)["input_ids"]
    return [*ids, eos_id(tokenizer)]


def fit_widths(records: list[Record], tokenizer, config: LoaderConfig) -> LoaderConfig:
    """The loader config with the run's one prompt width (and SFT response width) measured
    from every record with the run's tokenizer, before step 1.

    A width left at 0 becomes the smallest multiple of `pad_multiple` that holds every record;
    a width that is set and too short for some record stops the run here, naming the longest
    record and the width that would hold them all. Skipping such records as bad input instead
    would only be found step after step, until the bad-input budget stopped the run, and one
    width for the whole run means one compiled program per stage."""
    if not records:
        return config
    prompts = [
        len(record_prompt_ids(tokenizer, r, config.reasoning_prompt)) - 1 + config.visual_tokens for r in records
    ]
    prompt_tokens = _fitted_width("data.prompt_tokens", config.prompt_tokens, prompts, records, config.pad_multiple)
    response_tokens, sft = config.response_tokens, [r for r in records if r.response is not None]
    if sft:
        responses = [len(record_response_ids(tokenizer, r)) for r in sft]
        response_tokens = _fitted_width("data.response_tokens", response_tokens, responses, sft, config.pad_multiple)
    return dataclasses.replace(config, prompt_tokens=prompt_tokens, response_tokens=response_tokens)


def _fitted_width(key: str, width: int, lengths: list[int], records: list[Record], multiple: int) -> int:
    longest = int(np.argmax(lengths))
    needed = -(-lengths[longest] // multiple) * multiple
    if not width:
        return needed
    if lengths[longest] > width:
        over = sum(n > width for n in lengths)
        raise DataError(
            f"{key}={width} is shorter than {over} of the {len(records)} records; the longest is "
            f"{records[longest].source} ({lengths[longest]} tokens); {key}={needed} holds them all "
            f"(or 0: measured from the data)"
        )
    return width


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
    """The record indices this process reads, in order, for all epochs (see `process_slots`)."""
    return np.asarray([index for _, _, index in process_slots(n, config, process_index, process_count)], np.int64)


def process_slots(n: int, config: LoaderConfig, process_index: int = 0, process_count: int = 1):
    """(epoch, position in the epoch's global order, record index) of every sample this
    process reads, in order.

    Each epoch is a fresh seeded permutation cut into global batches of `batch_size *
    process_count` (a partial last batch is dropped); process p takes the p-th block of
    `batch_size` of each. The global batch, blocks laid end to end in process order, is then
    the same whatever the number of processes, which lets a multi-host run reproduce a
    single-host one."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    b, global_batch = config.batch_size, config.batch_size * process_count
    slots = []
    for epoch in range(config.num_epochs):
        permutation = np.random.default_rng([config.seed, epoch]).permutation(n)
        steps = n // global_batch
        positions = np.arange(steps * global_batch).reshape(steps, process_count, b)[:, process_index].reshape(-1)
        slots += [(epoch, int(p), int(permutation[p])) for p in positions]
    return slots


REPLACEMENT_TRIES = 64  # candidates drawn for one bad slot before the loader gives up


def replacement_candidates(config: LoaderConfig, epoch: int, position: int, n: int) -> np.ndarray:
    """The records that stand in, in turn, for a bad sample at (epoch, position): a seeded
    draw from all records that depends on the slot only, so a replacement is the same
    whatever the number of processes and after a resume."""
    return np.random.default_rng([config.seed, epoch, position, 1]).integers(n, size=REPLACEMENT_TRIES)


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
        slots = process_slots(len(records), config, process_index, process_count)
        if not slots:
            raise DataError(f"{len(records)} records fill no global batch of {config.batch_size} x {process_count}")
        self.records, self.planned = records, len(slots)
        self.make_sample = MakeSample(data_root, tokenizer, config)
        self.read = 0  # samples read so far (replacement attempts included)
        source = [Slot(epoch, position, records[index]) for epoch, position, index in slots]
        # Imported here: the config, the model and the plan need no data pipeline (a GPU
        # machine checking a plan may not have grain installed).
        import absl.flags
        import grain

        dataset = grain.MapDataset.source(source).map(self.make_sample)
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
        """The next batch, always full: a bad sample is counted (or, under `error`, raised)
        and replaced by the first good one of its slot's candidates."""
        samples = []
        for _ in range(self.config.batch_size):
            sample = next(self._iterator)  # StopIteration: the planned epochs are done
            self.read += 1
            if "error" in sample:
                sample = self._replace(sample)
            samples.append(sample)
        c = self.config
        return collate(samples, self.pad_id, c.pad_multiple, c.text_width, c.response_tokens or None)

    def _replace(self, bad: dict[str, Any]) -> dict[str, Any]:
        self.policy.bad(bad["kind"], bad["error"])
        epoch, position = bad["slot"]
        for index in replacement_candidates(self.config, epoch, position, len(self.records)):
            sample = self.make_sample.make(self.records[index])
            self.read += 1
            if "error" not in sample:
                sample["slot"] = bad["slot"]
                return sample
            self.policy.bad(sample["kind"], sample["error"])
        raise DataError(
            f"no usable sample among {REPLACEMENT_TRIES} replacements for epoch {epoch} position {position}; "
            f"{self.policy.summary()}"
        )

    def too_many_bad(self) -> str | None:
        """Why the run must stop, or None: more bad samples than `max_bad_fraction` of the
        samples this process plans to read (a budget for the whole run, spent as they come)."""
        bad = sum(self.policy.counts.values())
        if bad <= self.config.max_bad_fraction * self.planned:
            return None
        first = [m for messages in self.policy.examples.values() for m in messages][:3]
        return (
            f"{bad} bad samples ({self.read} read of {self.planned} planned), more than "
            f"data.max_bad_fraction={self.config.max_bad_fraction} of the plan ({self.policy.summary()}); "
            f"first: {'; '.join(first)}"
        )

    def close(self) -> None:
        """Stop worker processes (also done when the loader is garbage collected)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def get_state(self) -> dict[str, Any]:
        return {
            "grain": json.loads(json.dumps(self._iterator.get_state(), default=_jsonable)),
            "skipped": dict(self.policy.counts),
            "read": self.read,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state["grain"])
        self.policy.counts.clear()
        self.policy.counts.update(state["skipped"])
        self.read = state.get("read", 0)


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"loader state holds a {type(value).__name__}")
