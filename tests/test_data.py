"""Video decoding, data set formats, the grain loader (exact resume), bad input under both
policies, and the synthetic generator."""

import dataclasses
import json
import os

import av
import numpy as np
import pytest

from jax_tinyr1.data.formats import (
    read_cold_start_json,
    read_grpo_jsonl,
    read_mlvu,
    read_mmvu,
    read_mvbench,
    read_videomme_parquet,
)
from jax_tinyr1.data.loader import LoaderConfig, VideoQALoader, fit_widths, process_order, record_prompt_ids
from jax_tinyr1.data.policy import BadInputPolicy, DataError, resolve_inside
from jax_tinyr1.data.synthetic import CHECKS, COLOURS, generate, make_clip, read_index, write_video
from jax_tinyr1.data.tokenizer import build_tokenizer
from jax_tinyr1.data.video import VideoDecodeError, frame_indices, read_frames


def _clip(frames=30, size=64, seed=0):
    return make_clip("direction", 0, np.random.default_rng(seed), frames=frames, size=size)[0]


def _pyav_frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("codec, ext", [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("mpeg4", "avi")])
def test_frames_follow_the_rule_and_equal_pyav(tmp_path, codec, ext):
    path = tmp_path / f"clip.{ext}"
    write_video(path, _clip(30), codec=codec)
    ours = read_frames(path, 16)
    indices = np.linspace(0, 29, 16).astype(int)
    np.testing.assert_array_equal(frame_indices(30, 16), indices)
    assert [read_index(f) for f in ours] == indices.tolist()  # the frames the rule picks...
    reference = _pyav_frames(path)
    np.testing.assert_array_equal(ours, np.stack([reference[i] for i in indices]))  # ...decoded identically


def test_short_single_frame_and_variable_frame_rate_videos(tmp_path):
    write_video(tmp_path / "five.mp4", _clip(5))
    assert [read_index(f) for f in read_frames(tmp_path / "five.mp4", 16)] == np.linspace(0, 4, 16).astype(int).tolist()
    write_video(tmp_path / "one.mp4", _clip(1))
    one = read_frames(tmp_path / "one.mp4", 16)
    assert one.shape == (16, 64, 64, 3) and all(read_index(f) == 0 for f in one)
    # Variable frame rate: irregular timestamps; indices are frame numbers, not times.
    frames = _clip(12)
    with av.open(str(tmp_path / "vfr.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        pts = 0
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = pts
            pts += 1 if i % 3 else 7  # uneven gaps
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    vfr = read_frames(tmp_path / "vfr.mkv", 6)
    assert [read_index(f) for f in vfr] == np.linspace(0, 11, 6).astype(int).tolist()


def test_huge_frames_are_scaled_while_decoding(tmp_path):
    big = np.zeros((3, 720, 1280, 3), np.uint8)
    big[:, :, 640:] = 255
    write_video(tmp_path / "big.mp4", big)
    frames = read_frames(tmp_path / "big.mp4", 2, max_side=256)
    assert frames.shape == (2, 144, 256, 3)
    assert frames[0, 72, 20].max() < 30 and frames[0, 72, 230].min() > 220
    assert read_frames(tmp_path / "big.mp4", 2, max_side=None).shape == (2, 720, 1280, 3)


def _bad_videos(root):
    """Every kind of unreadable video, in the data root."""
    write_video(root / "videos" / "good.mp4", _clip(8))
    raw = (root / "videos" / "good.mp4").read_bytes()
    (root / "videos" / "empty.mp4").write_bytes(b"")
    (root / "videos" / "truncated.mp4").write_bytes(raw[: len(raw) // 2])
    (root / "videos" / "text.mp4").write_text("this is not a video")
    return ["videos/missing.mp4", "videos/empty.mp4", "videos/truncated.mp4", "videos/text.mp4"]


@pytest.mark.parametrize("name", ["missing.mp4", "empty.mp4", "truncated.mp4", "text.mp4"])
def test_unreadable_videos_raise_one_error_type_naming_the_file(tmp_path, name):
    (tmp_path / "videos").mkdir()
    _bad_videos(tmp_path)
    with pytest.raises(VideoDecodeError, match=name):
        read_frames(tmp_path / "videos" / name, 4)


def test_paths_must_stay_inside_the_data_root(tmp_path):
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    (tmp_path / "outside.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "outside.mp4", root / "videos" / "link.mp4")
    os.symlink(root / "videos", root / "inner_link")
    for bad in ("../outside.mp4", "videos/../../outside.mp4", str(tmp_path / "outside.mp4"), "videos/link.mp4"):
        with pytest.raises(DataError, match=r"outside the data root|absolute"):
            resolve_inside(root, bad)
    assert resolve_inside(root, "inner_link/a.mp4") == root / "inner_link" / "a.mp4"  # a link that stays inside


GRPO_ROWS = [
    {"problem": "Q?\nA. x\nB. y\nC. z\nD. w", "solution": "<answer>B</answer>", "video_filename": "./videos/good.mp4"},
    "{not json",
    {"problem": "Q?\nA. x\nB. y", "video_filename": "./videos/good.mp4"},  # no solution
    {"problem": "Q?\nA. x\nB. y", "solution": "<answer>E</answer>", "video_filename": "./videos/good.mp4"},
    {"problem": "Q?\nA. x\nB. y", "solution": "<answer>A</answer>", "video_filename": "videos/good.mp4"},
]


def _write_grpo(path):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in GRPO_ROWS))


@pytest.mark.parametrize(
    "line, message",
    [(2, "invalid JSON"), (3, "missing field.*solution"), (4, "label 'E' is not among the options"), (5, "prefix")],
)
def test_bad_annotation_lines_are_named_under_error(tmp_path, line, message):
    rows = [GRPO_ROWS[0], GRPO_ROWS[line - 1]]
    path = tmp_path / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"train.jsonl:2: .*{message}"):
        read_grpo_jsonl(path)


def test_bad_annotation_lines_are_skipped_and_counted(tmp_path):
    _write_grpo(tmp_path / "train.jsonl")
    policy = BadInputPolicy("skip")
    records = read_grpo_jsonl(tmp_path / "train.jsonl", policy)
    assert [r.answer for r in records] == ["B"] and records[0].video == "videos/good.mp4"
    assert records[0].options == ("x", "y", "z", "w") and records[0].source.endswith("train.jsonl:1")
    assert policy.counts == {"annotation": 4} and "annotation=4" in policy.summary()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(
        ["Which way does the square move? A. left B. right"] * 10, tmp_path_factory.mktemp("tok"), vocab_size=300
    )


def _records(root, videos):
    rows = [
        {"problem": f"Q{i}?\nA. x\nB. y", "solution": "<answer>A</answer>", "video_filename": f"./{v}", "id": v}
        for i, v in enumerate(videos)
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_grpo_jsonl(root / "train.jsonl")


def test_bad_videos_under_both_policies_in_the_loader(tmp_path, tokenizer):
    (tmp_path / "videos").mkdir()
    bad = _bad_videos(tmp_path)
    # 8 records, batch 2: whole batches cover them all (a partial one would be cut before reading)
    records = _records(tmp_path, ["videos/good.mp4", *bad, "../escape.mp4", "videos/good.mp4", "videos/good.mp4"])
    config = LoaderConfig(batch_size=2, num_frames=4, image_size=16, bad_input="skip")
    loader = VideoQALoader(records, tmp_path, tokenizer, config)
    batches = list(loader)  # runs to the end: every bad sample seen
    # Every planned batch is full: each bad sample is replaced by a good record.
    assert len(batches) == 4 and all(b["ids"] == ["videos/good.mp4"] * 2 for b in batches)
    assert all(b["pixels"].shape == (2, 4, 16, 16, 3) for b in batches)
    counts = loader.policy.counts  # each bad one scheduled, plus bad replacement candidates
    assert counts["video"] >= 4 and counts["path"] >= 1 and set(counts) == {"video", "path"}
    assert f"path={counts['path']}" in loader.policy.summary()
    # The replacements depend on the slot only: the same for another loader, and after a resume.
    again = VideoQALoader(records, tmp_path, tokenizer, config)
    first = next(again)
    state = again.get_state()
    rest = list(again)
    resumed = VideoQALoader(records, tmp_path, tokenizer, config)
    resumed.set_state(state)
    assert [b["ids"] for b in resumed] == [b["ids"] for b in rest] and first["ids"] == batches[0]["ids"]
    assert dict(again.policy.counts) == dict(counts) == dict(resumed.policy.counts)
    strict = VideoQALoader(records, tmp_path, tokenizer, LoaderConfig(batch_size=8, num_frames=4, image_size=16))
    with pytest.raises(DataError, match=r"train.jsonl:\d+: .*(missing|empty|truncated|text|escape)"):
        next(strict)


def test_the_run_width_is_measured_from_every_record_before_step_1(tmp_path, tokenizer):
    """0: the smallest multiple of pad_multiple holding every prompt (spliced: text + visual
    tokens), so every batch has that one width; set too short: stopped naming the longest."""
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "good.mp4", _clip(frames=6, size=32), fps=6)
    rows = [
        {"problem": "Q?\nA. x\nB. y", "solution": "<answer>A</answer>", "video_filename": "./videos/good.mp4"},
        {
            "problem": "Which way does the square move, left or right, up or down, or not at all?\nA. left\n"
            "B. right\nC. up\nD. down\nE. not at all",
            "solution": "<answer>B</answer>",
            "video_filename": "./videos/good.mp4",
        },
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    records = read_grpo_jsonl(tmp_path / "train.jsonl")
    config = LoaderConfig(batch_size=2, num_frames=2, image_size=16, visual_tokens=9, pad_multiple=8)
    lengths = [len(record_prompt_ids(tokenizer, r, True)) - 1 + 9 for r in records]
    fitted = fit_widths(records, tokenizer, config)
    assert fitted.prompt_tokens == -(-max(lengths) // 8) * 8 and fitted.prompt_tokens - 8 < max(lengths)
    assert {b["prompt_ids"].shape[1] for b in VideoQALoader(records, tmp_path, tokenizer, fitted)} == {
        fitted.prompt_tokens - 9 + 1
    }
    assert fit_widths(
        records, tokenizer, dataclasses.replace(config, prompt_tokens=max(lengths))
    ) == dataclasses.replace(config, prompt_tokens=max(lengths))
    too_short = dataclasses.replace(config, prompt_tokens=max(lengths) - 1, bad_input="skip")
    with pytest.raises(
        DataError,
        match=rf"data.prompt_tokens={max(lengths) - 1} is shorter than 2 of the 4 records; "
        rf"the longest is .*train.jsonl:2 \({max(lengths)} tokens\); data.prompt_tokens="
        rf"{fitted.prompt_tokens} holds them all",
    ):
        fit_widths(records, tokenizer, too_short)


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_loader_yields_the_same_batches(tmp_path, tokenizer, workers):
    paths = generate(tmp_path, 10, seed=1, cold_start=0, frames=8)
    records = read_grpo_jsonl(paths["train"])
    config = LoaderConfig(batch_size=2, num_frames=4, image_size=16, seed=3, num_epochs=2, num_workers=workers)
    uninterrupted = VideoQALoader(records, tmp_path, tokenizer, config)
    batches = [next(uninterrupted) for _ in range(6)]
    first = VideoQALoader(records, tmp_path, tokenizer, config)
    next(first), next(first)
    state = json.loads(json.dumps(first.get_state()))  # the state survives JSON (checkpoints)
    resumed = VideoQALoader(records, tmp_path, tokenizer, config)
    resumed.set_state(state)
    for expected in batches[2:]:
        got = next(resumed)
        assert got["ids"] == expected["ids"]
        np.testing.assert_array_equal(got["pixels"], expected["pixels"])
        np.testing.assert_array_equal(got["prompt_ids"], expected["prompt_ids"])
    seen = [i for b in batches[:5] for i in b["ids"]]
    assert sorted(seen) == sorted(r.id for r in records)  # epoch 1: every sample once, shuffled
    assert seen != [r.id for r in records]


def test_process_blocks_lay_end_to_end_into_the_single_process_batch(tmp_path, tokenizer):
    paths = generate(tmp_path, 9, seed=2, cold_start=0, frames=4)
    records = read_grpo_jsonl(paths["train"])
    per_process = LoaderConfig(batch_size=2, num_frames=2, image_size=16, num_epochs=2)
    single = dataclasses.replace(per_process, batch_size=4)
    shards = [
        list(VideoQALoader(records, tmp_path, tokenizer, per_process, process_index=p, process_count=2))
        for p in range(2)
    ]
    whole = list(VideoQALoader(records, tmp_path, tokenizer, single))
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4  # 2 epochs x 9 // 4 (the rest dropped)
    for step, batch in enumerate(whole):
        assert batch["ids"] == shards[0][step]["ids"] + shards[1][step]["ids"]
        np.testing.assert_array_equal(batch["pixels"], np.concatenate([s[step]["pixels"] for s in shards]))
    first_epoch = [i for b in whole[:2] for i in b["ids"]]
    second_epoch = [i for b in whole[2:] for i in b["ids"]]
    assert len(set(first_epoch)) == 8 and first_epoch != second_epoch  # each epoch its own shuffle
    with pytest.raises(ValueError, match="process_index 2"):
        process_order(9, per_process, 2, 2)


def test_synthetic_data_set_is_deterministic_balanced_and_parses(tmp_path):
    a = generate(tmp_path / "a", 40, seed=5, cold_start=4, frames=6)
    b = generate(tmp_path / "b", 40, seed=5, cold_start=4, frames=6)
    assert a["train"].read_text() == b["train"].read_text()
    records = read_grpo_jsonl(a["train"])
    assert len(records) == 40 and all(4 <= len(r.options) <= 5 for r in records)
    letters = [r.answer for r in records]
    assert max(letters.count(x) for x in "ABCD") - min(letters.count(x) for x in "ABCD") <= 3
    cold = read_cold_start_json(a["cold_start"])
    assert len(cold) == 4 and all(r.response.endswith(f"<answer>{r.answer}</answer>") for r in cold)
    with_captions = generate(
        tmp_path / "c", 0, seed=5, cold_start=4, frames=6, with_reasoning=False, captions=True, kinds=("screen_colour",)
    )
    base = read_cold_start_json(with_captions["cold_start"])
    questions, captions = base[0::2], base[1::2]
    assert [r.response for r in questions] == [r.answer for r in questions] and all(r.answer for r in questions)
    assert all(r.options == () and r.answer == "" and r.response.startswith("The screen is ") for r in captions)
    sixteen = generate(tmp_path / "d", 0, seed=5, cold_start=16, frames=2, size=16, kinds=("middle_colour",))
    samples = read_cold_start_json(sixteen["cold_start"])
    # The check comes after the tentative answer, so its length cannot change the answer.
    checks = [
        r.response.split(f"So the answer is option {r.answer}.")[1].removesuffix(f"</think><answer>{r.answer}</answer>")
        for r in samples
    ]
    assert set(checks) == set(CHECKS)
    assert len(set(zip(checks, [r.answer for r in samples], strict=True))) == 16  # each check with each letter once
    frames, *_ = make_clip("screen_colour", 2, np.random.default_rng(0), frames=4, size=16, shuffle_options=False)
    assert tuple(frames[-1, 0, 0]) == COLOURS["blue"]  # options in a fixed order: C is blue
    assert all(r.response.startswith("<think>") for r in cold)
    frames = read_frames(tmp_path / "a" / records[0].video, 6)
    assert [read_index(f) for f in frames] == list(range(6))


def test_evaluation_formats(tmp_path):
    (tmp_path / "mvbench.json").write_text(
        json.dumps(
            [
                {"video": "a.mp4", "question": "What?", "candidates": ["cat", "dog", "cow"], "answer": "dog"},
                {"video": "b.mp4", "question": "What?", "candidates": ["cat"], "answer": "emu"},
            ]
        )
    )
    policy = BadInputPolicy("skip")
    mv = read_mvbench(tmp_path / "mvbench.json", "action", policy)
    assert [(r.answer, r.options, r.meta["task"]) for r in mv] == [("B", ("cat", "dog", "cow"), "action")]
    assert "B. dog" in mv[0].question and policy.counts == {"annotation": 1}
    with pytest.raises(DataError, match=r"mvbench\.json\[0\]: missing field\(s\) \['start', 'end'\]"):
        read_mvbench(tmp_path / "mvbench.json", "action", bounded=True)
    (tmp_path / "mlvu.json").write_text(
        json.dumps(
            [
                {
                    "video": "c.mp4",
                    "question": "Q",
                    "candidates": ["1", "2", "3", "4"],
                    "answer": "3",
                    "question_type": "count",
                }
            ]
        )
    )
    assert read_mlvu(tmp_path / "mlvu.json", "count")[0].answer == "C"
    (tmp_path / "mmvu.json").write_text(
        json.dumps(
            [
                {
                    "id": "m1",
                    "question": "Q",
                    "choices": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"},
                    "answer": "E",
                    "question_type": "multiple-choice",
                    "video": "m.mp4",
                },
                {
                    "id": "m2",
                    "question": "Q",
                    "choices": {},
                    "answer": "x",
                    "question_type": "open-ended",
                    "video": "n.mp4",
                },
            ]
        )
    )
    mmvu = read_mmvu(tmp_path / "mmvu.json")
    assert [(r.id, r.answer, len(r.options), r.video) for r in mmvu] == [("m1", "E", 5, "m.mp4")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "videoID": "vid1",
                    "question_id": "001-1",
                    "duration": "short",
                    "task_type": "Counting",
                    "question": "How many?",
                    "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
                    "answer": "D",
                },
                {
                    "videoID": "vid2",
                    "question_id": "001-2",
                    "duration": "short",
                    "task_type": "Counting",
                    "question": "How many?",
                    "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
                    "answer": "Z",
                },
            ]
        ),
        tmp_path / "videomme.parquet",
    )
    with pytest.raises(DataError, match=r"videomme.parquet\[1\]: answer 'Z' is not among the options"):
        read_videomme_parquet(tmp_path / "videomme.parquet")
    vm = read_videomme_parquet(tmp_path / "videomme.parquet", BadInputPolicy("skip"))
    assert [(r.video, r.answer, r.meta["duration"], r.options[3]) for r in vm] == [("vid1.mp4", "D", "short", "4")]
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON"):
        read_mlvu(tmp_path / "broken.json", "count")
