"""Benchmark scores under a named protocol: MVBench micro average over its items (per task
reported), MLVU macro average over its tasks, Video-MME overall and per duration, MMVU
overall (its multiple-choice items), jsonl overall.

Protocols (both 1024 new tokens by default):
- `original`, how the paper's numbers were made: sampling at temperature 1 with top-k 50, the
  original scripts' answer rule, a seeded random option when it finds none (counted as
  guessed);
- `strict`: greedy decoding, our answer parsing (data/answers.py), an unparsed answer wrong.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence

from jax_tinyr1.data.answers import LETTERS, original_prediction, parse_prediction
from jax_tinyr1.data.formats import Record
from jax_tinyr1.eval.benchmarks import BENCHMARKS
from jax_tinyr1.rewards.behaviour import behaviour_rates


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    temperature: float
    top_k: int
    parse: str  # "original" | "strict"


PROTOCOLS = {
    "original": Protocol("original", temperature=1.0, top_k=50, parse="original"),
    "strict": Protocol("strict", temperature=0.0, top_k=0, parse="strict"),
}


def choices_of(record: Record) -> tuple[str, ...]:
    """The option letters of a question: the file's own (MMVU, Video-MME) or A, B, ..."""
    return tuple(record.meta.get("choices") or LETTERS[: len(record.options)])


def score(
    records: Sequence[Record],
    outputs: Sequence[str],
    benchmark: str,
    *,
    protocol: str = "strict",
    seed: int = 0,
    tagged: bool = True,
) -> dict:
    """Accuracy of `outputs` on `records`. `tagged=False` (strict only) reads a whole output
    as the answer (a model asked the plain question answers with the letter alone)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    if len(records) != len(outputs):
        raise ValueError(f"{len(records)} records but {len(outputs)} outputs")
    rng = random.Random(seed)
    by_group: dict[str, list[bool]] = defaultdict(list)
    items, unparsed, correct_total = [], 0, 0
    for record, text in zip(records, outputs, strict=True):
        choices = choices_of(record)
        if PROTOCOLS[protocol].parse == "original":
            prediction, guessed = original_prediction(text, choices, rng)
        else:
            prediction = parse_prediction(text, len(choices), tagged=tagged, letters="".join(choices))
            guessed = prediction is None
        unparsed += guessed
        correct = prediction == record.answer
        correct_total += correct
        by_group[str(record.meta.get("task") or benchmark)].append(correct)
        items.append(
            {
                "id": record.id,
                "task": record.meta.get("task"),
                "answer": record.answer,
                "prediction": prediction,
                "guessed": guessed,
                "correct": correct,
                "output": text,
            }
        )
    per_group = {g: 100.0 * sum(v) / len(v) for g, v in sorted(by_group.items())}
    micro = 100.0 * correct_total / max(len(records), 1)
    overall = sum(per_group.values()) / max(len(per_group), 1) if benchmark == "mlvu" else micro
    return {
        "benchmark": benchmark,
        "protocol": dataclasses.asdict(PROTOCOLS[protocol]),
        "overall": overall,
        "micro": micro,
        "per_group": per_group,
        "count": len(records),
        "unparsed": unparsed,
        **behaviour_rates(outputs),
        "items": items,
    }


def format_table(results: dict, accounting: dict | None = None) -> str:
    """Accuracy per task (and found / evaluated / missing / undecodable when given)."""
    group_name = "duration" if results["benchmark"] == "videomme" else "task"
    columns = f"{group_name:<32}{'accuracy':>10}"
    if accounting:
        columns += f"{'found':>8}{'evaluated':>11}{'missing':>9}{'undecodable':>13}"
    lines = [columns]
    groups = list(accounting) if accounting else list(results["per_group"])
    for group in groups:
        accuracy = results["per_group"].get(group)
        line = f"{group:<32}{'-' if accuracy is None else f'{accuracy:.1f}':>10}"
        if accounting:
            a = accounting[group]
            line += f"{a['found']:>8}{a['evaluated']:>11}{a['missing']:>9}{a['undecodable']:>13}"
        lines.append(line)
    average = "macro" if results["benchmark"] == "mlvu" else "micro"
    lines.append(f"{'overall (' + average + ')':<32}{results['overall']:>10.1f}")
    guess = "guessed at random" if results["protocol"]["parse"] == "original" else "counted wrong"
    name, unparsed, count = results["protocol"]["name"], results["unparsed"], results["count"]
    lines.append(f"protocol {name}; unparsed answers ({guess}): {unparsed} of {count}")
    return "\n".join(lines)
