"""Benchmark scores: MVBench micro average over its tasks, MLVU macro
average over tasks, Video-MME overall and per duration, MMVU overall (multiple choice).

An output with no parseable option letter counts as wrong and is reported as unparsed; the
original's random guess for such outputs is available (`random_fallback`) for comparison."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from jax_tinyr1.data.answers import LETTERS, parse_prediction
from jax_tinyr1.data.formats import Record

BENCHMARKS = ("mvbench", "videomme", "mlvu", "mmvu", "jsonl")


def score(
    records: Sequence[Record],
    outputs: Sequence[str],
    benchmark: str,
    *,
    random_fallback: bool = False,
    seed: int = 0,
    tagged: bool = True,
) -> dict:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if len(records) != len(outputs):
        raise ValueError(f"{len(records)} records but {len(outputs)} outputs")
    rng = random.Random(seed)
    by_group: dict[str, list[bool]] = defaultdict(list)
    items, unparsed, correct_total = [], 0, 0
    for record, text in zip(records, outputs, strict=True):
        prediction = parse_prediction(text, len(record.options), tagged=tagged)
        if prediction is None:
            unparsed += 1
            if random_fallback:
                prediction = LETTERS[rng.randrange(len(record.options))]
        correct = prediction == record.answer
        correct_total += correct
        group = record.meta.get("duration") if benchmark == "videomme" else record.meta.get("task", benchmark)
        by_group[str(group or benchmark)].append(correct)
        items.append(
            {"id": record.id, "answer": record.answer, "prediction": prediction, "correct": correct, "output": text}
        )
    per_group = {g: 100.0 * sum(v) / len(v) for g, v in sorted(by_group.items())}
    micro = 100.0 * correct_total / max(len(records), 1)
    overall = sum(per_group.values()) / max(len(per_group), 1) if benchmark == "mlvu" else micro
    return {
        "benchmark": benchmark,
        "overall": overall,
        "micro": micro,
        "per_group": per_group,
        "count": len(records),
        "unparsed": unparsed,
        "random_fallback": random_fallback,
        "items": items,
    }


def format_table(results: dict) -> str:
    group_name = "duration" if results["benchmark"] == "videomme" else "task"
    lines = [f"{group_name:<32}{'accuracy':>10}"]
    lines += [f"{g:<32}{acc:>10.1f}" for g, acc in results["per_group"].items()]
    average = "macro" if results["benchmark"] == "mlvu" else "micro"
    lines.append(f"{'overall (' + average + ')':<32}{results['overall']:>10.1f}")
    lines.append(f"unparsed answers: {results['unparsed']} of {results['count']}")
    return "\n".join(lines)
