"""Evaluation on the benchmarks as published: small fixtures in each official layout (real
clips written with PyAV as mp4, webm and avi, a JPEG frame folder, MMVU URL fields, a
Video-MME parquet), the original's prompts byte for byte, its frame indices worked out by
hand, and nothing silently missing."""

import functools
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jax_tinyr1.data.answers import original_prediction
from jax_tinyr1.data.policy import BadInputPolicy
from jax_tinyr1.data.synthetic import read_index, stamp_index, write_video
from jax_tinyr1.data.template import eval_question, grpo_question, render_prompt
from jax_tinyr1.data.tokenizer import build_tokenizer
from jax_tinyr1.data.video import segment_indices
from jax_tinyr1.eval.__main__ import EXIT_INCOMPLETE, main
from jax_tinyr1.eval.benchmarks import MLVU_TASKS, MVBENCH_TASKS, load_benchmark
from jax_tinyr1.model import build_model, get_preset, save_pretrained

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. "
)
INSTRUCTION = "Output the thinking process in <think> </think> and final answer (option) in <answer> </answer> tags."
MMVU_URL = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main"


def _stamped(count: int, size: int = 64) -> np.ndarray:
    frames = np.full((count, size, size, 3), 90, np.uint8)
    for i, frame in enumerate(frames):
        stamp_index(frame, i)
    return frames


def _write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _mvbench(root):
    """Four tasks with one item each (mp4 with bounds, avi, webm, a JPEG folder); the other
    16 task files empty."""
    items = {
        "Action Sequence": {"video": "a.mp4", "start": 1.0, "end": 2.0},
        "Fine-grained Pose": {"video": "b.avi"},
        "Action Antonym": {"video": "c.webm"},
        "Episodic Reasoning": {"video": "d", "start": 2.0, "end": 8.0},
    }
    for task, spec in MVBENCH_TASKS.items():
        item = items.get(task)
        rows = []
        if item:
            rows = [{**item, "question": "What is the man doing?", "candidates": ["sitting", "standing"]}]
            rows[0]["answer"] = "standing"
        _write_json(root / "json" / spec.file, rows)
    videos = root / "video"
    write_video(videos / "star/Charades_v1_480/a.mp4", _stamped(40), fps=10)
    write_video(videos / "nturgbd/b.avi", _stamped(40), codec="mpeg4", fps=10)
    write_video(videos / "ssv2_video/c.webm", _stamped(40), codec="libvpx", fps=10)
    folder = videos / "tvqa/frames_fps3_hq/d"
    folder.mkdir(parents=True)
    for number, frame in enumerate(_stamped(31)[1:], start=1):  # 00001.jpg .. 00030.jpg show their number
        Image.fromarray(frame).save(folder / f"{number:05d}.jpg", quality=95)


def _mlvu(root):
    for task, folder in MLVU_TASKS.items():
        rows = []
        if task == "count":
            rows = [{"video": "e.mp4", "question": "How many?", "candidates": ["1", "2", "3"], "answer": "3"}]
        _write_json(root / "json" / f"{folder}.json", rows)
    write_video(root / "video/4_count/e.mp4", _stamped(40), fps=10)


def _mmvu(root, missing: bool = False):
    rows = [
        {
            "id": "m1",
            "question": "Which law?",
            "choices": {"A": "Ohm", "B": "Hooke", "C": "Snell", "D": "Boyle", "E": "Faraday"},
            "answer": "C",
            "question_type": "multiple-choice",
            "video": f"{MMVU_URL}/videos/Physics/1.mp4",
        },
        {
            "id": "m2",
            "question": "Explain.",
            "choices": {},
            "answer": "free text",
            "question_type": "open-ended",
            "video": f"{MMVU_URL}/videos/Physics/2.mp4",
        },
    ]
    if missing:
        rows.append({**rows[0], "id": "m3", "video": f"{MMVU_URL}/videos/Physics/absent.mp4"})
    _write_json(root / "validation.json", rows)
    write_video(root / "videos/Physics/1.mp4", _stamped(40), fps=10)


def _videomme(root):
    (root / "videomme").mkdir(parents=True)
    row = {
        "videoID": "fFjv93ACGo8",
        "question_id": "001-1",
        "duration": "short",
        "question": "How many people?",
        "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
        "answer": "B",
    }
    pq.write_table(pa.Table.from_pylist([row]), root / "videomme" / "test-00000-of-00001.parquet")
    write_video(root / "data/fFjv93ACGo8.mp4", _stamped(40), fps=10)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    _mvbench(root / "MVBench")
    _mlvu(root / "MLVU")
    _mmvu(root / "MMVU")
    _videomme(root / "Video-MME")
    return root


def _prompt(block):
    return f"{SYSTEM}USER: <image>\n{block}\n{INSTRUCTION} ASSISTANT:"


def test_prompts_are_the_originals_byte_for_byte(layouts):
    policy = BadInputPolicy()
    mv = load_benchmark("mvbench", layouts / "MVBench", policy)
    asked = {item.task: render_prompt(mv.question(item.record)) for item in mv.items}
    assert asked["Fine-grained Pose"] == _prompt("What is the man doing?\nOptions:\nA. sitting\nB. standing")
    assert [i.record.answer for i in mv.items] == ["B"] * 4
    mlvu = load_benchmark("mlvu", layouts / "MLVU", policy)
    assert render_prompt(mlvu.question(mlvu.items[0].record)) == _prompt("How many?\n(A) 1\n(B) 2\n(C) 3")
    mmvu = load_benchmark("mmvu", layouts / "MMVU", policy)
    assert [i.record.id for i in mmvu.items] == ["m1"]  # open-ended items are not scored
    assert render_prompt(mmvu.question(mmvu.items[0].record)) == _prompt(
        "Which law?\nA. Ohm\nB. Hooke\nC. Snell\nD. Boyle\nE. Faraday"
    )
    vm = load_benchmark("videomme", layouts / "Video-MME", policy)
    assert render_prompt(vm.question(vm.items[0].record)) == _prompt(
        "How many people?\nOptions:\nA. One.\nB. Two.\nC. Three.\nD. Four."
    )
    # Paths as the original makes them: task prefixes, numbered folders, URL -> root, videoID.
    assert {i.task: i.video.relative_to(layouts / "MVBench").as_posix() for i in mv.items} == {
        "Action Sequence": "video/star/Charades_v1_480/a.mp4",
        "Fine-grained Pose": "video/nturgbd/b.avi",
        "Action Antonym": "video/ssv2_video/c.webm",
        "Episodic Reasoning": "video/tvqa/frames_fps3_hq/d",
    }
    assert mlvu.items[0].video == layouts / "MLVU/video/4_count/e.mp4"
    assert mmvu.items[0].video == layouts / "MMVU/videos/Physics/1.mp4"
    assert vm.items[0].video == layouts / "Video-MME/data/fFjv93ACGo8.mp4"


def test_frame_indices_follow_the_original_rules(layouts):
    # get_index worked out by hand. No bound, 10 fps, 40 frames (max_frame 39), 4 segments:
    # seg 9.75, int(4.875 + round(9.75 i)) -> 4, 14, 24 (round(19.5) = 20), 33.
    assert segment_indices(None, 10.0, 39, 0, 4).tolist() == [4, 14, 24, 33]
    # Frames at 3 fps from 00001.jpg, bound 2-8 s: start 6, end 24, seg 4.5 ->
    # int(8.25 + round(4.5 i)) -> 8, 12 (round(4.5) = 4), 17, 22.
    assert segment_indices((2.0, 8.0), 3.0, 30, 1, 4).tolist() == [8, 12, 17, 22]
    # Bound 1-2 s at 10 fps: start 10, end 20, seg 2.5 -> int(11.25 + round(2.5 i)) -> 11,
    # 13 (round(2.5) = 2), 16, 19 (round(7.5) = 8): numpy rounds halves to even.
    assert segment_indices((1.0, 2.0), 10.0, 39, 0, 4).tolist() == [11, 13, 16, 19]
    mv = load_benchmark("mvbench", layouts / "MVBench", BadInputPolicy())
    stamps = {item.task: [read_index(f) for f in item.read(4)] for item in mv.items}
    assert stamps == {
        "Action Sequence": [0, 13, 26, 39],  # mp4 sources: all frames, linspace; bounds unused
        "Fine-grained Pose": [4, 14, 24, 33],  # avi: segments
        "Action Antonym": [4, 14, 24, 33],  # webm: segments
        "Episodic Reasoning": [8, 12, 17, 22],  # JPEG folder at 3 fps, numbered from 1
    }
    mlvu = load_benchmark("mlvu", layouts / "MLVU", BadInputPolicy())
    assert [read_index(f) for f in mlvu.items[0].read(4)] == [0, 13, 26, 39]


def test_original_answer_rule():
    rng = random.Random(0)
    choices = ("A", "B", "C", "D")
    assert original_prediction("<think>.</think><answer> b) dog </answer>", choices, rng) == ("B", False)
    assert original_prediction("<answer>the (C) one</answer>", choices, rng) == ("C", False)
    assert original_prediction("<answer></answer>", choices, rng) == (None, False)  # scored wrong
    assert original_prediction("<answer>\nA\n</answer>", choices, rng) == ("A", False)  # \s* spans lines
    guess, guessed = original_prediction("<answer>A\nbecause</answer>", choices, rng)  # no DOTALL: no match
    assert guessed and guess in choices


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    build_tokenizer(["What is the man doing? Options: sitting standing", INSTRUCTION] * 3, root / "tokenizer", 300)
    save_pretrained(root, build_model(get_preset("tinyllava-video-tiny"), seed=0))
    return root


def _eval(checkpoint, benchmark, data, out, *extra):
    args = ["--checkpoint", str(checkpoint), "--benchmark", benchmark, "--data", str(data), "--out", str(out)]
    return main([*args, "--max-new-tokens", "4", "--batch-size", "4", "--workers", "2", *extra])


def test_every_item_of_every_layout_is_evaluated_through_the_entry_point(layouts, checkpoint, tmp_path, capsys):
    expected = {
        "mvbench": ("MVBench", 4, 20),
        "mlvu": ("MLVU", 1, 7),
        "mmvu": ("MMVU", 1, 1),
        "videomme": ("Video-MME", 1, 3),
    }
    for benchmark, (folder, count, tasks) in expected.items():
        protocol = "original" if benchmark == "mvbench" else "strict"
        out = tmp_path / f"{benchmark}.json"
        assert _eval(checkpoint, benchmark, layouts / folder, out, "--protocol", protocol) == 0
        results = json.loads(out.read_text())
        assert results["count"] == count and results["complete"] and results["protocol"]["name"] == protocol
        assert len(results["accounting"]) == tasks  # every task of the benchmark is named
        assert sum(a["evaluated"] for a in results["accounting"].values()) == count
        assert results["throughput"]["videos_per_s"] > 0
    table = capsys.readouterr().out
    assert "Counterfactual Inference" in table and "topic_reasoning" in table


def test_a_missing_video_exits_4_naming_it_unless_allowed(tmp_path, checkpoint, capsys):
    _mmvu(tmp_path / "MMVU", missing=True)
    assert _eval(checkpoint, "mmvu", tmp_path / "MMVU", tmp_path / "r.json") == EXIT_INCOMPLETE
    assert "videos/Physics/absent.mp4" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()  # stopped before any generation
    assert _eval(checkpoint, "mmvu", tmp_path / "MMVU", tmp_path / "r.json", "--allow-missing") == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["accounting"]["multiple-choice"] == {"found": 2, "evaluated": 1, "missing": 1, "undecodable": 0}
    assert not results["complete"] and results["missing_files"][0].endswith("absent.mp4")
    assert "left out: 1 item(s)" in capsys.readouterr().out


def test_ask_one_video_streamed_and_plain(layouts, checkpoint, tmp_path, capsys):
    from jax_tinyr1.ask import ask
    from jax_tinyr1.ask import main as ask_main

    video = layouts / "MLVU/video/4_count/e.mp4"
    args = ["--checkpoint", str(checkpoint), "--video", str(video), "--question", "How many?"]
    assert ask_main([*args, "--option", "A. 1", "--option", "B. 2", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "answer: " in out and "seconds: decode video" in out and "generate" in out
    # Streamed: the tokens printed as they come make up the final completion.
    result = ask(
        checkpoint, video, "How many?", [], tokenizer_dir=None, max_new_tokens=6, temperature=1.0, seed=3, stream=True
    )
    assert result["completion"] and capsys.readouterr().out.strip() == result["completion"]
    assert result["question"] == eval_question("How many?")
    # As GRPO training asked it (the demo's models know only that wording).
    ask_quietly = functools.partial(ask, checkpoint, video, tokenizer_dir=None, temperature=0.0, seed=0, stream=False)
    trained = ask_quietly("How many?", ["A. 1", "B. 2"], max_new_tokens=2, prompt="train")
    assert trained["question"] == grpo_question("How many?\nA. 1\nB. 2") != eval_question("How many?\nA. 1\nB. 2")
    # Plain option texts are lettered in order; the answer is a letter offered, or said not to be.
    plain = ask_quietly("How many?", ["1", "2", "3"], max_new_tokens=6)
    assert plain["question"] == eval_question("How many?\nA. 1\nB. 2\nC. 3")
    assert plain["answer"] is None or plain["answer_is_option"] == (plain["answer"] in ("A", "B", "C"))
    # One option, a mix of lettered and plain ones, letters out of order: refused before the model is read.
    for options in (["A. 1"], ["A. 1", "2"], ["A. 1", "C. 2"]):
        assert ask_main([*args, *[x for o in options for x in ("--option", o)]]) == 2
        assert "--option: " in capsys.readouterr().err
    assert ask_main([*args, "--prompt", "train", "--max-new-tokens", "2"]) == 0
    with pytest.raises(SystemExit) as refused:  # argparse's own exit for an unknown choice
        ask_main([*args, "--prompt", "chat"])
    assert refused.value.code == 2 and "invalid choice: 'chat'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prompt must be one of"):
        ask_quietly("Q", [], max_new_tokens=1, prompt="chat")
    # A frame folder works as a video; a broken file is named.
    assert ask_main([*args[:2], "--video", str(layouts / "MVBench/video/tvqa/frames_fps3_hq/d"), *args[4:]]) == 0
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert ask_main([*args[:2], "--video", str(tmp_path / "broken.mp4"), *args[4:]]) == 2
    assert "broken.mp4" in capsys.readouterr().err
