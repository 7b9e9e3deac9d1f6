"""Evaluating a model on benchmark items: batched answering with the next batch's videos decoded
meanwhile (`evaluate`), and the per-task accounting of what was evaluated (`accounting`).
`python -m jax_tinyr1.eval` (eval/__main__.py) parses its arguments and calls these."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax

from jax_tinyr1.data.formats import Record
from jax_tinyr1.data.loader import LoaderConfig
from jax_tinyr1.data.policy import DataError
from jax_tinyr1.data.preprocess import preprocess_frames
from jax_tinyr1.data.template import prompt_ids
from jax_tinyr1.eval.benchmarks import Item
from jax_tinyr1.generate.answer import Answerer
from jax_tinyr1.generate.sampling import SamplingConfig


def evaluate(
    model,
    config,
    tokenizer,
    items: list[Item],
    *,
    question: Callable[[Record], str],
    batch_size: int,
    sampling: SamplingConfig,
    seed: int = 0,
    workers: int = 4,
) -> tuple[dict[int, str], dict[int, str], dict[str, float]]:
    """(outputs by item index, undecodable items' messages by index, throughput). Batches
    are items of similar prompt length; the next batch's videos are decoded and preprocessed
    (`workers` threads) while the current one generates."""
    start = time.perf_counter()
    answerer = Answerer(model, sampling, pad_multiple=LoaderConfig.pad_multiple)
    prompts = [prompt_ids(tokenizer, question(item.record)) for item in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    outputs, undecodable = {}, {}
    generated_tokens, generate_s = 0, 0.0

    def frames_of(i):
        try:
            return i, preprocess_frames(items[i].read(config.num_frames), config.vision.image_size), None
        except DataError as e:  # VideoDecodeError included
            return i, None, str(e)

    with ThreadPoolExecutor(max(1, workers)) as decoders, ThreadPoolExecutor(1) as prefetch:

        def load(batch):
            return list(decoders.map(frames_of, batch))

        pending = prefetch.submit(load, batches[0]) if batches else None
        for k, _ in enumerate(batches):
            loaded = pending.result()
            pending = prefetch.submit(load, batches[k + 1]) if k + 1 < len(batches) else None
            good = [(i, f) for i, f, error in loaded if error is None]
            undecodable.update({i: error for i, _, error in loaded if error is not None})
            if not good:
                continue
            began = time.perf_counter()
            key = jax.random.fold_in(jax.random.key(seed), k)
            tokens = answerer([prompts[i] for i, _ in good], [f for _, f in good], key, rows=batch_size)
            generate_s += time.perf_counter() - began
            for (i, _), row in zip(good, tokens, strict=True):
                generated_tokens += len(row)
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    elapsed = time.perf_counter() - start
    throughput = {
        "seconds": elapsed,
        "videos_per_s": len(outputs) / elapsed if elapsed else 0.0,
        "generated_tokens_per_s": generated_tokens / generate_s if generate_s else 0.0,
        "generate_seconds": generate_s,
    }
    return outputs, undecodable, throughput


def accounting(bench, missing: set[int], undecodable: dict[int, str], evaluated: set[int]) -> dict[str, dict]:
    """Per task: items found in the annotations, evaluated, missing (no video), undecodable."""
    table = {t: {"found": 0, "evaluated": 0, "missing": 0, "undecodable": 0} for t in bench.tasks}
    for i, item in enumerate(bench.items):
        row = table.setdefault(item.task, {"found": 0, "evaluated": 0, "missing": 0, "undecodable": 0})
        row["found"] += 1
        row["evaluated"] += i in evaluated
        row["missing"] += i in missing
        row["undecodable"] += i in undecodable
    return table
