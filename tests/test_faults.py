"""Faults a run meets at scale, through the entry point: bad videos (replaced, or too many:
stop with a checkpoint), a damaged checkpoint (the previous one restored), a non-finite step
(nothing changes), and bad input to every command (one line, exit 2)."""

import json
import shutil

import jax
import numpy as np
import pytest
from run_data import synthetic_run_root

from jax_tinyr1.data.template import IMAGE_TOKEN_INDEX
from jax_tinyr1.model import build_model, get_preset
from jax_tinyr1.sft.objective import SFTConfig
from jax_tinyr1.sft.trainer import SFTTrainer
from jax_tinyr1.train.run import main as train_main
from jax_tinyr1.update.optimizer import OptimizerConfig


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory):
    """16 GRPO records, 2 of them with truncated videos."""
    root = synthetic_run_root(tmp_path_factory.mktemp("faulty"), 16, seed=1)
    videos = sorted((root / "data" / "videos").glob("*.mp4"))
    for video in (videos[3], videos[10]):
        video.write_bytes(video.read_bytes()[:200])
    return root


def _grpo(root, out, *extra):
    return train_main(
        [
            f"data.root={root / 'data'}",
            f"run.tokenizer={root / 'tok'}",
            f"run.output_dir={out}",
            "grpo.group_size=2",
            "sampling.max_new_tokens=4",
            "sampling.top_k=0",
            "data.batch_size=4",
            "data.bad_input=skip",
            "run.save_every=2",
            "optimizer.learning_rate=1e-3",
            *extra,
        ],
        stage="grpo",
        description="",
    )


def _params(out):
    from jax_tinyr1.model import load_pretrained

    model, _ = load_pretrained(out / "final")
    return [np.asarray(x) for x in jax.tree.leaves(model)]


def test_bad_videos_are_replaced_and_a_damaged_checkpoint_falls_back(sixteen, tmp_path, capsys):
    out = tmp_path / "run"
    assert _grpo(sixteen, out, "data.max_bad_fraction=0.25") == 0
    err = capsys.readouterr().err
    assert "samples: bad input skipped: video=2" in err, err[-2000:]  # both counted, by kind
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and (out / "final").is_dir()  # the planned 16 / 4 steps, all full
    before = _params(out)

    # Damage the newest checkpoint (step 4): a truncated parameter file.
    files = [f for f in (out / "checkpoints" / "4" / "trainable").rglob("*") if f.is_file()]
    biggest = max(files, key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    assert _grpo(sixteen, out, "data.max_bad_fraction=0.25") == 0
    err = capsys.readouterr().err
    assert "the checkpoint at step 4 cannot be restored" in err and "damaged-4" in err, err[-2000:]
    assert (out / "checkpoints" / "damaged-4").is_dir()  # kept for inspection
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 3-4 ran again from step 2; each is logged once
    for a, b in zip(before, _params(out), strict=True):
        np.testing.assert_array_equal(a, b)  # the same run, bitwise


def test_too_many_bad_videos_stop_with_a_checkpoint_and_the_files(sixteen, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(sixteen, root)
    videos = sorted((root / "data" / "videos").glob("*.mp4"))
    for video in videos[:12]:
        video.write_bytes(b"")
    assert _grpo(root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "bad samples (" in err and "data.max_bad_fraction=0.05" in err and "clip_000" in err, err[-2000:]
    assert "checkpoint at step 1" in err and (tmp_path / "run" / "checkpoints" / "1").is_dir()


def test_a_non_finite_step_changes_nothing_and_is_counted():
    config = SFTConfig(optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, total_steps=4))
    trainer = SFTTrainer(build_model(get_preset("tinyllava-video-tiny"), seed=0), config, pad_id=1)
    ids = np.array([[5, IMAGE_TOKEN_INDEX, 7], [4, IMAGE_TOKEN_INDEX, 10]])
    response = np.array([[8, 9, 1], [11, 12, 1]])
    pixels = np.zeros((2, 4, 16, 16, 3), np.float32)
    before = jax.tree.map(np.asarray, (trainer.trainable, trainer.opt_state))
    metrics = trainer.step(ids, np.ones_like(ids), np.full_like(pixels, np.nan), response, np.ones_like(response))
    after = jax.tree.map(np.asarray, (trainer.trainable, trainer.opt_state))
    assert metrics["nonfinite"] == 1.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)  # parameters and Adam state bitwise unchanged
    metrics = trainer.step(ids, np.ones_like(ids), pixels, response, np.ones_like(response))
    assert metrics["nonfinite"] == 0.0 and np.isfinite(metrics["nll"])
    assert any(
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(before[0]), jax.tree.leaves(trainer.trainable), strict=False)
    )


def _exit(main, argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse: a bad value of an option
        return e.code


def test_every_command_answers_bad_input_with_one_line_and_exit_2(sixteen, tmp_path, capsys):
    from checkpoints_convert import flax_to_hf, hf_to_flax
    from jax_tinyr1 import ask, demo, plot
    from jax_tinyr1.data import synthetic
    from jax_tinyr1.eval import __main__ as evaluation
    from jax_tinyr1.model import save_pretrained

    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "bad.yaml").write_text("model: [")
    (malformed / "config.json").write_text("{")
    (malformed / "validation.json").write_text("[{")
    (malformed / "metrics.jsonl").write_text('{"reward": 1}\n')
    (malformed / "clip.mp4").write_bytes(b"not a video")
    checkpoint = tmp_path / "ckpt"
    save_pretrained(checkpoint, build_model(get_preset("tinyllava-video-tiny"), seed=0))
    shutil.copytree(sixteen / "tok", checkpoint / "tokenizer")
    nowhere = str(tmp_path / "nowhere")

    def stage(name):
        return lambda argv: train_main(argv, stage=name, description="")

    cases = {
        "train.grpo": (
            stage("grpo"),
            [["--config", nowhere], ["--config", str(malformed / "bad.yaml")], ["optimizer.learning_rate=-1"]],
        ),
        "train.sft": (
            stage("sft"),
            [["--config", nowhere], ["--config", str(malformed / "bad.yaml")], ["sft.micro_batches=0"]],
        ),
        "eval": (
            evaluation.main,
            [
                ["--checkpoint", str(checkpoint), "--benchmark", "mmvu", "--data", nowhere],
                ["--checkpoint", str(checkpoint), "--benchmark", "mmvu", "--data", str(malformed)],
                ["--checkpoint", str(checkpoint), "--benchmark", "mmvu", "--data", str(malformed), "--batch-size", "0"],
            ],
        ),
        "plot": (plot.main, [[nowhere], [str(malformed)], ["--no-such-option"]]),
        "demo": (demo.main, [["--out", str(malformed / "clip.mp4")], ["--bogus"]]),
        "ask": (
            ask.main,
            [
                ["--checkpoint", str(checkpoint), "--video", nowhere, "--question", "Q"],
                ["--checkpoint", str(checkpoint), "--video", str(malformed / "clip.mp4"), "--question", "Q"],
                [
                    "--checkpoint",
                    str(checkpoint),
                    "--video",
                    str(malformed / "clip.mp4"),
                    "--question",
                    "Q",
                    "--max-new-tokens",
                    "0",
                ],
            ],
        ),
        "hf_to_flax": (
            hf_to_flax.main,
            [
                ["--hf-dir", nowhere, "--out", str(tmp_path / "o1")],
                ["--hf-dir", str(malformed), "--out", str(tmp_path / "o2")],
                ["--hf-dir", str(malformed), "--out", str(tmp_path / "o3"), "--param-dtype", "int8"],
            ],
        ),
        "flax_to_hf": (
            flax_to_hf.main,
            [
                ["--checkpoint", nowhere, "--out", str(tmp_path / "o4")],
                ["--checkpoint", str(malformed), "--out", str(tmp_path / "o5")],
                ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o6"), "--component", "connector"],
            ],
        ),
        "synthetic": (
            synthetic.main,
            [
                ["--out", str(malformed / "clip.mp4" / "x"), "--n", "1"],
                ["--out", str(tmp_path / "s"), "--n", "1", "--codec", "no-such-codec"],
                ["--out", str(tmp_path / "s"), "--n", "-1"],
            ],
        ),
    }
    for name, (main, argvs) in cases.items():
        for argv in argvs:
            code = _exit(main, argv)
            err = capsys.readouterr().err
            last = err.strip().splitlines()[-1] if err.strip() else ""
            assert code == 2 and "Traceback" not in err, (name, argv, code, err[-1500:])
            assert last.startswith(("error:", f"{name}: error:")) or ": error: " in last, (name, argv, last)


def test_consecutive_non_finite_steps_stop_the_run_with_the_last_finite_state(sixteen, tmp_path, capsys):
    # A learning rate of 1e30 sends the weights to ~1e30; once the loss is non-finite it stays
    # so (the parameters no longer change), and the second such step in a row stops the run.
    out = tmp_path / "run"
    code = _grpo(
        sixteen, out, "data.max_bad_fraction=0.25", "optimizer.learning_rate=1e30", "run.max_nonfinite_steps=2"
    )
    err = capsys.readouterr().err
    assert code == 5 and "2 consecutive steps with a non-finite loss or gradient" in err, err[-2000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    flags = [m["nonfinite"] for m in logged]
    assert flags[-2:] == [1.0, 1.0] and set(flags[:-2]) <= {0.0} and logged[-1]["nonfinite_steps"] == 2
    assert (out / "checkpoints" / str(len(logged))).is_dir() and not (out / "final").exists()


def test_no_pytorch_advice_without_torch():
    import subprocess
    import sys

    hidden = "import sys; sys.modules['torch'] = None; import jax_tinyr1.data.tokenizer"
    out = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True)
    assert out.returncode == 0 and "PyTorch" not in out.stderr, out.stderr
