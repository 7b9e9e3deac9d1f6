"""Data set formats parsed into one record type.

Training: the GRPO JSONL (`problem`, `solution`, `video_filename`) and the cold-start JSON
(`video`, `conversations`). Evaluation: MVBench task JSONs, Video-MME parquet rows, MLVU
JSON, MMVU `validation.json` (multiple-choice items). Every error names the file and the
line (JSONL) or index (JSON lists, parquet rows). Under the `skip` policy a bad item is
counted and logged, and parsing goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jax_tinyr1.data.answers import LETTERS, OPTION_LINE, label_letter
from jax_tinyr1.data.policy import BadInputPolicy, DataError
from jax_tinyr1.data.template import REASONING_SUFFIX


@dataclass(frozen=True)
class Record:
    video: str  # path relative to the data root
    question: str  # the question as the model is asked it, options laid out as the format has them
    options: tuple[str, ...]  # option texts, in letter order
    answer: str  # the right option's letter ("" for an open-ended SFT sample)
    id: str
    source: str  # "file:line" or "file[index]", for error messages
    response: str | None = None  # a reference response (cold start: the reasoning text)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # task, duration, ...


def parse_options(problem: str) -> tuple[str, ...]:
    """Option texts from consecutive lines "A. ...", "B. ..." (in letter order from A)."""
    options = []
    for line in problem.splitlines():
        match = OPTION_LINE.match(line)
        if match and match.group(1) == LETTERS[len(options)]:
            options.append((match.group(2) or "").strip())
    return tuple(options)


def _require(item: dict, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    missing = [k for k in keys if k not in item]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


def _check_answer(answer: str | None, options: tuple[str, ...], where: str) -> str:
    if not options:
        raise DataError(f"{where}: no options (lines like 'A. ...') found")
    if answer is None or answer not in LETTERS[: len(options)]:
        raise DataError(f"{where}: label {answer!r} is not among the options {list(LETTERS[: len(options)])}")
    return answer


# -- readers of the raw containers -----------------------------------------------------------


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: invalid JSON ({e.msg})")


def _json_list_items(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of items")
    for index, item in enumerate(items):
        yield f"{path}[{index}]", item


def _parse(items: Iterator[tuple[str, Any]], one, policy: BadInputPolicy) -> list[Record]:
    records = []
    for where, item in items:
        try:
            if isinstance(item, DataError):
                raise item
            record = one(item, where)
        except DataError as e:
            policy.bad("annotation", str(e))
            continue
        if record is not None:
            records.append(record)
    return records


# -- the formats ------------------------------------------------------------------------------


# The fields training reads, as the original reads them; `id` names a record in messages.
GRPO_FIELDS = ("problem", "solution", "video_filename", "id")
COLD_START_FIELDS = ("video", "conversations", "id")


def _unread(item: dict, read: tuple[str, ...]) -> dict[str, Any]:
    return {"unread": tuple(sorted(set(item) - set(read)))}


def unread_fields(records: list[Record]) -> dict[str, int]:
    """Field name -> how many records carry it unread (a run says so at start)."""
    counts: dict[str, int] = {}
    for record in records:
        for name in record.meta.get("unread", ()):
            counts[name] = counts.get(name, 0) + 1
    return counts


def _grpo_item(item, where):
    _require(item, ("problem", "solution", "video_filename"), where)
    video = str(item["video_filename"])
    if len(video) < 2 or video[1] != "/":
        raise DataError(f"{where}: video_filename {video!r} lacks the one-character prefix before '/'")
    options = parse_options(item["problem"])
    answer = _check_answer(label_letter(str(item["solution"])), options, where)
    return Record(
        video=video[2:],
        question=item["problem"],
        options=options,
        answer=answer,
        id=str(item.get("id", where)),
        source=where,
        meta=_unread(item, GRPO_FIELDS),
    )


def read_grpo_jsonl(path: Path, policy: BadInputPolicy | None = None) -> list[Record]:
    return _parse(_jsonl_items(Path(path)), _grpo_item, policy or BadInputPolicy())


def _cold_start_item(item, where):
    _require(item, ("video", "conversations"), where)
    turns = item["conversations"]
    if not (isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, dict) for t in turns)):
        raise DataError(f"{where}: conversations must be a list of at least two turns")
    human = next((t.get("value") for t in turns if t.get("from") == "human"), None)
    gpt = next((t.get("value") for t in turns if t.get("from") == "gpt"), None)
    if not isinstance(human, str) or not isinstance(gpt, str):
        raise DataError(f"{where}: conversations need a 'human' and a 'gpt' turn with text values")
    question = human.replace("<image>", "").strip()
    options = parse_options(question.removesuffix(REASONING_SUFFIX))  # the instruction is not an option
    # A question without option lines is an open-ended sample (a caption): no letter to check.
    answer = _check_answer(label_letter(gpt), options, where) if options else ""
    return Record(
        video=str(item["video"]),
        question=question,
        options=options,
        answer=answer,
        id=str(item.get("id", where)),
        source=where,
        response=gpt,
        meta=_unread(item, COLD_START_FIELDS),
    )


def read_cold_start_json(path: Path, policy: BadInputPolicy | None = None) -> list[Record]:
    return _parse(_json_list_items(Path(path)), _cold_start_item, policy or BadInputPolicy())


def _candidates_item(item, where, block, meta):
    """MVBench and MLVU: `candidates` texts and the right candidate's text as `answer`;
    `block(question, options)` lays the question out as the benchmark's script does."""
    _require(item, ("video", "question", "candidates", "answer"), where)
    options = tuple(str(c) for c in item["candidates"])
    if item["answer"] not in options:
        raise DataError(f"{where}: answer {item['answer']!r} is not among the candidates")
    return Record(
        video=str(item["video"]),
        question=block(str(item["question"]), options),
        options=options,
        answer=LETTERS[options.index(item["answer"])],
        id=str(item.get("question_id", where)),
        source=where,
        meta=meta(item, where),
    )


def mvbench_block(question: str, options) -> str:
    """eval_mvbench.py: the question, "Options:", then "A. text" lines."""
    return (f"{question}\nOptions:\n" + "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(options))).rstrip()


def mlvu_block(question: str, options) -> str:
    """eval_mlvu.py: the question, then "(A) text" lines."""
    return (f"{question}\n" + "".join(f"({LETTERS[i]}) {c}\n" for i, c in enumerate(options))).rstrip()


def read_mvbench(path: Path, task: str, policy: BadInputPolicy | None = None, *, bounded: bool = False) -> list[Record]:
    """One MVBench task file; `bounded` tasks carry `start` and `end` seconds."""

    def meta(item, where):
        if not bounded:
            return {"task": task}
        _require(item, ("start", "end"), where)
        return {"task": task, "bound": (float(item["start"]), float(item["end"]))}

    return _parse(
        _json_list_items(Path(path)),
        lambda i, w: _candidates_item(i, w, mvbench_block, meta),
        policy or BadInputPolicy(),
    )


def read_mlvu(path: Path, task: str, policy: BadInputPolicy | None = None) -> list[Record]:
    return _parse(
        _json_list_items(Path(path)),
        lambda i, w: _candidates_item(i, w, mlvu_block, lambda item, where: {"task": task}),
        policy or BadInputPolicy(),
    )


def _videomme_item(item, where):
    _require(item, ("videoID", "question", "options", "answer", "duration"), where)
    raw = [str(o) for o in item["options"]]
    choices = tuple(o.split(".")[0] for o in raw)  # eval_videomme.py: "A. text." -> "A"
    options = tuple(re.sub(r"^[A-Z][.)]\s*", "", o).strip() for o in raw)
    answer = str(item["answer"]).strip()
    if answer not in choices:
        raise DataError(f"{where}: answer {answer!r} is not among the options {list(choices)}")
    return Record(
        video=f"{item['videoID']}.mp4",
        question=f"{item['question']}\nOptions:\n" + "\n".join(raw),
        options=options,
        answer=answer,
        id=str(item.get("question_id", where)),
        source=where,
        meta={"task": str(item["duration"]), "duration": str(item["duration"]), "choices": choices},
    )


def read_videomme_parquet(path: Path, policy: BadInputPolicy | None = None) -> list[Record]:
    import pyarrow.parquet as pq  # the `eval` extra

    rows = pq.read_table(path).to_pylist()
    return _parse(((f"{path}[{i}]", row) for i, row in enumerate(rows)), _videomme_item, policy or BadInputPolicy())


MMVU_URL = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main"  # replaced by the data root


def _mmvu_item(item, where):
    _require(item, ("question", "choices", "answer", "question_type", "video"), where)
    if item["question_type"] != "multiple-choice":
        return None  # open-ended items are not part of the multiple-choice evaluation
    choices = item["choices"]
    if not isinstance(choices, dict) or not choices:
        raise DataError(f"{where}: choices must be a non-empty mapping of letters to texts")
    letters = tuple(str(k) for k in choices)  # the file's order, as eval_mmvu.py lists them
    answer = str(item["answer"]).strip()
    if answer not in letters:
        raise DataError(f"{where}: answer {answer!r} is not among the choices {list(letters)}")
    video = str(item["video"])
    return Record(
        video=video.removeprefix(MMVU_URL).lstrip("/"),
        question=str(item["question"]) + "\n" + "\n".join(f"{k}. {v}" for k, v in choices.items()),
        options=tuple(str(v) for v in choices.values()),
        answer=answer,
        id=str(item.get("id", where)),
        source=where,
        meta={"task": "multiple-choice", "choices": letters},
    )


def read_mmvu(path: Path, policy: BadInputPolicy | None = None) -> list[Record]:
    return _parse(_json_list_items(Path(path)), _mmvu_item, policy or BadInputPolicy())
