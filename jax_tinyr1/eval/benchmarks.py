"""The benchmarks as published: where their files are below the downloaded root, how a video
path is made, which frames are taken and how the question is asked (the original's
`tinyllava/eval/eval_*.py`). `--data` is the benchmark's download directory, as it comes.

    benchmark  annotations                          videos                             frames
    mvbench    json/<task file> (20, MVBENCH_TASKS) video/<task prefix>/<video>        linspace; avi, webm,
                                                                                           JPEG folders: segments
    mlvu       json/<N_task>.json (7, MLVU_TASKS)   video/<N_task>/<video>             linspace
    mmvu       validation.json (multiple-choice)    the `video` URL, its prefix -> ROOT linspace
    videomme   videomme/*.parquet                   data/<videoID>.mp4                 linspace
    jsonl      the GRPO-format file itself          relative to its folder             linspace
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jax_tinyr1.data.formats import Record, read_grpo_jsonl, read_mlvu, read_mmvu, read_mvbench, read_videomme_parquet
from jax_tinyr1.data.policy import BadInputPolicy, DataError, resolve_inside
from jax_tinyr1.data.template import eval_question, grpo_question
from jax_tinyr1.data.video import read_frame_folder, read_frames

BENCHMARKS = ("mvbench", "videomme", "mlvu", "mmvu", "jsonl")


@dataclasses.dataclass(frozen=True)
class MVBenchTask:
    file: str  # below json/
    prefix: str  # below video/
    source: str  # video (mp4, all frames) | video_avi | video_webm | frame (a JPEG folder at 3 fps)
    bounded: bool  # items carry start/end seconds


# eval_mvbench.py's `data_list`, task by task.
MVBENCH_TASKS = {
    "Fine-grained Pose": MVBenchTask("fine_grained_pose.json", "nturgbd", "video_avi", False),
    "Episodic Reasoning": MVBenchTask("episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    "Action Sequence": MVBenchTask("action_sequence.json", "star/Charades_v1_480", "video", True),
    "Action Prediction": MVBenchTask("action_prediction.json", "star/Charades_v1_480", "video", True),
    "Action Antonym": MVBenchTask("action_antonym.json", "ssv2_video", "video_webm", False),
    "Fine-grained Action": MVBenchTask("fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    "Unexpected Action": MVBenchTask("unexpected_action.json", "FunQA_test/test", "video", False),
    "Object Existence": MVBenchTask("object_existence.json", "clevrer/video_validation", "video", False),
    "Object Interaction": MVBenchTask("object_interaction.json", "star/Charades_v1_480", "video", True),
    "Object Shuffle": MVBenchTask("object_shuffle.json", "perception/videos", "video", False),
    "Moving Direction": MVBenchTask("moving_direction.json", "clevrer/video_validation", "video", False),
    "Action Localization": MVBenchTask("action_localization.json", "sta/sta_video", "video", True),
    "Scene Transition": MVBenchTask("scene_transition.json", "scene_qa/video", "video", False),
    "Action Count": MVBenchTask("action_count.json", "perception/videos", "video", False),
    "Moving Count": MVBenchTask("moving_count.json", "clevrer/video_validation", "video", False),
    "Moving Attribute": MVBenchTask("moving_attribute.json", "clevrer/video_validation", "video", False),
    "State Change": MVBenchTask("state_change.json", "perception/videos", "video", False),
    "Character Order": MVBenchTask("character_order.json", "perception/videos", "video", False),
    "Egocentric Navigation": MVBenchTask("egocentric_navigation.json", "vlnqa", "video", False),
    "Counterfactual Inference": MVBenchTask(
        "counterfactual_inference.json", "clevrer/video_validation", "video", False
    ),
}
# eval_mlvu.py's `data_list`: task -> its numbered folder (and json/<folder>.json).
MLVU_TASKS = {
    "plotQA": "1_plotQA",
    "needle": "2_needle",
    "ego": "3_ego",
    "count": "4_count",
    "order": "5_order",
    "anomaly_reco": "6_anomaly_reco",
    "topic_reasoning": "7_topic_reasoning",
}


@dataclasses.dataclass(frozen=True)
class Item:
    """One question to evaluate: its record, where its frames are and how they are taken."""

    record: Record
    video: Path
    rule: str  # "linspace" | "segments" (a video file) | "folder" (a JPEG frame folder)
    bound: tuple[float, float] | None = None

    @property
    def task(self) -> str:
        return str(self.record.meta.get("task", ""))

    def read(self, num_frames: int) -> np.ndarray:
        if self.rule == "folder":
            return read_frame_folder(self.video, num_frames, bound=self.bound)
        return read_frames(self.video, num_frames, rule=self.rule, bound=self.bound)


@dataclasses.dataclass
class Benchmark:
    name: str
    items: list[Item]
    tasks: list[str]  # every task (or group) the benchmark defines, in its order
    missing_files: list[str]  # annotation files of the layout that are not there

    def question(self, record: Record) -> str:
        """The text the model is asked: the original's prompt for the official benchmarks,
        the training prompt for a GRPO-format file."""
        return grpo_question(record.question) if self.name == "jsonl" else eval_question(record.question)


def _inside(root: Path, *parts: str) -> Path:
    return resolve_inside(root, str(Path(*parts)))


def _mvbench(root: Path, policy: BadInputPolicy) -> Benchmark:
    items, missing = [], []
    for task, spec in MVBENCH_TASKS.items():
        path = root / "json" / spec.file
        if not path.is_file():
            missing.append(str(path))
            continue
        rule = "linspace" if spec.source == "video" else "folder" if spec.source == "frame" else "segments"
        for record in read_mvbench(path, task, policy, bounded=spec.bounded):
            # eval_mvbench.py: mp4 ("video") sources take all frames; their bounds are not used.
            bound = record.meta.get("bound") if rule != "linspace" else None
            items.append(Item(record, _inside(root, "video", spec.prefix, record.video), rule, bound))
    return Benchmark("mvbench", items, list(MVBENCH_TASKS), missing)


def _mlvu(root: Path, policy: BadInputPolicy) -> Benchmark:
    items, missing = [], []
    for task, folder in MLVU_TASKS.items():
        path = root / "json" / f"{folder}.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        for record in read_mlvu(path, task, policy):
            items.append(Item(record, _inside(root, "video", folder, record.video), "linspace"))
    return Benchmark("mlvu", items, list(MLVU_TASKS), missing)


def _mmvu(root: Path, policy: BadInputPolicy) -> Benchmark:
    path = root / "validation.json"
    if not path.is_file():
        return Benchmark("mmvu", [], ["multiple-choice"], [str(path)])
    items = [Item(r, _inside(root, r.video), "linspace") for r in read_mmvu(path, policy)]
    return Benchmark("mmvu", items, ["multiple-choice"], [])


def _videomme(root: Path, policy: BadInputPolicy) -> Benchmark:
    files = sorted((root / "videomme").glob("*.parquet"))
    if not files:
        return Benchmark("videomme", [], ["short", "medium", "long"], [str(root / "videomme" / "*.parquet")])
    records = [r for f in files for r in read_videomme_parquet(f, policy)]
    items = [Item(r, _inside(root, "data", r.video), "linspace") for r in records]
    return Benchmark("videomme", items, ["short", "medium", "long"], [])


def _jsonl(path: Path, policy: BadInputPolicy) -> Benchmark:
    if not path.is_file():
        return Benchmark("jsonl", [], ["jsonl"], [str(path)])
    records = read_grpo_jsonl(path, policy)
    items = [
        Item(dataclasses.replace(r, meta={**r.meta, "task": "jsonl"}), _inside(path.parent, r.video), "linspace")
        for r in records
    ]
    return Benchmark("jsonl", items, ["jsonl"], [])


def load_benchmark(name: str, data: Path, policy: BadInputPolicy) -> Benchmark:
    """Every item of the benchmark below `data` (its download root; for jsonl the file)."""
    readers = {"mvbench": _mvbench, "mlvu": _mlvu, "mmvu": _mmvu, "videomme": _videomme, "jsonl": _jsonl}
    if name not in readers:
        raise DataError(f"--benchmark must be one of {BENCHMARKS}, got {name!r}")
    if name != "jsonl" and not Path(data).is_dir():
        raise DataError(f"--data {data}: not a directory (the {name} download root)")
    return readers[name](Path(data), policy)
