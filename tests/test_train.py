"""Training entry points: config errors, exact resume after SIGKILL, evaluation scores, the demo."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from run_data import synthetic_run_root

from jax_tinyr1.data.answers import parse_prediction
from jax_tinyr1.data.formats import Record
from jax_tinyr1.eval.scoring import format_table, score
from jax_tinyr1.train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_config_files_load_and_name_bad_keys(tmp_path):
    paper = load_config(ROOT / "configs" / "paper_8xa100.yaml")
    assert (paper.grpo.group_size, paper.optimizer.learning_rate, paper.mesh.fsdp) == (8, 1e-6, 8)
    assert (paper.objective.beta, paper.sampling.max_new_tokens, paper.data.prompt_tokens) == (0.01, 512, 672)
    no_kl = load_config(ROOT / "configs" / "ablation_no_kl.yaml").objective
    assert (no_kl.beta, no_kl.aggregation) == (0.0, "grpo")
    dr = load_config(ROOT / "configs" / "ablation_dr_grpo.yaml").objective
    assert (dr.beta, dr.aggregation, dr.advantage_scale) == (0.0, "dr_grpo", "none")
    assert load_config(ROOT / "configs" / "demo_cpu.yaml", ["objective.beta=0"]).objective.beta == 0.0
    with pytest.raises(ConfigError, match=r"unknown key.*objective\.bta"):
        load_config(None, ["objective.bta=0.1"])
    with pytest.raises(ConfigError, match=r"grpo\.group_size: expected int"):
        load_config(None, ["grpo.group_size=eight"])
    with pytest.raises(ConfigError, match=r"unknown key.*nonsense"):
        load_config(None, ["nonsense.x=1"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(None, ["optimizer.eps=1e-3", "optimizer.b2=0.99"]).optimizer.b2 == 0.99
    with pytest.raises(ConfigError, match="eps > 0"):
        load_config(None, ["optimizer.eps=0"])


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_entry_point_exits_non_zero_naming_the_problem(tmp_path):
    out = _run(
        [
            "jax_tinyr1.train.grpo",
            "--config",
            str(ROOT / "configs" / "demo_cpu.yaml"),
            f"data.root={tmp_path / 'nowhere'}",
        ]
    )
    assert out.returncode == 2 and "data.root" in out.stderr and "nowhere" in out.stderr
    out = _run(["jax_tinyr1.train.grpo", "sampling.temperature=hot"])
    assert out.returncode == 2 and "sampling.temperature" in out.stderr


@pytest.fixture(scope="module")
def tiny_run_data(tmp_path_factory):
    return synthetic_run_root(tmp_path_factory.mktemp("run"), 8)


def _grpo_args(root, out):
    return [
        "jax_tinyr1.train.grpo",
        f"data.root={root / 'data'}",
        f"run.tokenizer={root / 'tok'}",
        f"run.output_dir={out}",
        "model.preset=tinyllava-video-tiny",
        "grpo.group_size=2",
        "sampling.max_new_tokens=6",
        "sampling.top_k=0",
        "data.batch_size=1",
        "run.max_steps=6",
        "run.save_every=1",
        "optimizer.learning_rate=1e-2",
        "optimizer.schedule=constant",
        "optimizer.warmup_ratio=0",
        "objective.beta=0.04",
    ]


def _final_params(out):
    import jax
    from flax import nnx

    from jax_tinyr1.model import load_pretrained

    model, _ = load_pretrained(out / "final")
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    }


def test_sigterm_checkpoints_the_step_in_flight_and_the_restart_is_exact(tiny_run_data, tmp_path):
    root = tiny_run_data
    env = {**os.environ, "XLA_FLAGS": ""}
    straight = _run(_grpo_args(root, tmp_path / "straight"), env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    # Start again; SIGTERM (a preemption) at a random moment after the first checkpoint.
    process = subprocess.Popen(
        [sys.executable, "-m", *_grpo_args(root, tmp_path / "stopped"), "run.save_every=1000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # right after step 1 (a compiled step takes < 1 s here)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    checkpoints = tmp_path / "stopped" / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    # The step in flight finished and was saved (save_every=1000 saves nothing else before step 6).
    assert f"stopped by SIGTERM; checkpoint at step {steps[-1]}" in err and len(steps) == 1, err[-2000:]
    assert not (tmp_path / "stopped" / "final").exists()
    resumed = _run(_grpo_args(root, tmp_path / "stopped"), env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _final_params(tmp_path / "straight"), _final_params(tmp_path / "stopped")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bitwise
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert logged == list(range(1, 7))  # every step once: none run twice, none lost
    assert {p.name for p in (tmp_path / "stopped").glob("*.png")} >= {"reward.png", "response_length.png"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_same_mesh(tiny_run_data, tmp_path):
    """2 processes x 4 CPU devices (gloo collectives), each reading its half of every batch,
    against 1 process x 8 devices, on the same data=2 x fsdp=4 mesh and global batch. The two
    processes are started with SLURM's variables only (JAX's cluster detection). One video is
    truncated: its replacement is the same in both (no process runs short or waits alone)."""
    root = tmp_path / "data_root"
    shutil.copytree(tiny_run_data, root)
    video = sorted((root / "data" / "videos").glob("*.mp4"))[3]
    video.write_bytes(video.read_bytes()[:200])
    # The untrained model never closes its tags, so every reward is -2 and the advantages are
    # 0: the update is the KL term's small gradient. With Adam's usual eps (1e-8) that update is
    # ~lr * sign(g), so last-bit differences in a near-zero gradient decide its sign. eps = 1e-3
    # keeps Adam in its linear range (update ~ lr * g / eps), where rounding stays rounding.
    common = ["mesh.data=2", "mesh.fsdp=4", "run.epochs=2", "run.max_steps=2", "run.save_every=1"]
    common += ["data.bad_input=skip", "data.max_bad_fraction=0.3"]
    common += ["optimizer.learning_rate=1e-3", "optimizer.eps=1e-3"]
    single = _run(
        [*_grpo_args(root, tmp_path / "one"), *common, "data.batch_size=8"],
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    assert single.returncode == 0, single.stderr[-2000:]
    # 2 processes launched as srun launches them: JAX's own SLURM detection, no JAX_* variables.
    job = _slurm_job_id_with_free_port()
    slurm = {"SLURM_JOB_ID": str(job), "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost"}
    _two_processes(root, tmp_path / "two", common, lambda i: {**slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_explicit_coordinator_variables_initialize_jax_distributed(monkeypatch):
    """JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are passed on as they are;
    a SLURM step or an Open MPI launch of 2+ processes lets JAX detect the cluster; else nothing."""
    import jax

    from jax_tinyr1.train import run

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", run.OMPI_URI, "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    run.maybe_initialize_distributed()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a 1-task allocation is not a cluster
    run.maybe_initialize_distributed()
    assert calls == []
    monkeypatch.setenv("SLURM_NTASKS", "16")
    run.maybe_initialize_distributed()
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv(run.OMPI_URI, "123.0;tcp://10.0.0.1:4000")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    run.maybe_initialize_distributed()
    assert calls == [{}, {}]  # JAX reads the scheduler's variables itself
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    run.maybe_initialize_distributed()
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}


def _slurm_job_id_with_free_port() -> int:
    """A job id whose port (JAX's SLURM rule: id mod 4096 + 61440) is free here."""
    for job in random.Random().sample(range(10_000, 99_999), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job % 4096 + 61440))
            except OSError:
                continue
            return job
    raise RuntimeError("no free port in JAX's SLURM range")


def _two_processes(root, out, common, launch_env):
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "SLURM_", "OMPI_"))
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", *_grpo_args(root, out), *common, "data.batch_size=4"],
            cwd=ROOT,
            env={**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", **launch_env(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    settings = json.loads((out / "run_config.json").read_text())["effective"]
    assert settings["processes"] == 2 and settings["devices"] == "8 of 8 cpu"


def _assert_same_run(one, two):
    a, b = _final_params(one), _final_params(two)
    assert a.keys() == b.keys()
    # Not bitwise: gloo's cross-process all-reduce adds the partial gradients in another order
    # than the in-process one (last-bit differences). Per tensor, relative to its norm:
    # Qwen2's key bias is left out: its gradient is analytically zero (softmax is shift
    # invariant per query), so Adam only ever moves it by normalised rounding noise.
    for key in a:
        if "k_bias" not in key:
            assert np.linalg.norm(a[key] - b[key]) <= 1e-6 * np.linalg.norm(a[key]), key
    metrics = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [m["reward"] for m in metrics[0]] == [m["reward"] for m in metrics[1]]
    assert [m["completions/mean_length"] for m in metrics[0]] == [m["completions/mean_length"] for m in metrics[1]]


def _record(i, answer, options=4, task="t", duration=None):
    meta = {"task": task} if duration is None else {"task": duration, "duration": duration}
    return Record(
        video=f"v{i}.mp4",
        question="q",
        options=tuple("opt" for _ in range(options)),
        answer=answer,
        id=str(i),
        source=f"f[{i}]",
        meta=meta,
    )


def test_scoring_with_known_answers_and_unparsed_outputs():
    assert parse_prediction("<think>..</think><answer>B</answer>", 4) == "B"
    assert parse_prediction("<answer>(c) maybe</answer>", 4) == "C"
    assert parse_prediction("<answer>E</answer>", 4) is None  # not an option of a 4-option question
    assert parse_prediction("the answer is B", 4) is None
    records = [
        _record(0, "A", task="x"),
        _record(1, "B", task="x"),
        _record(2, "C", task="y"),
        _record(3, "D", task="y"),
    ]
    outputs = ["<answer>A</answer>", "<answer>C</answer>", "no tags at all", "<answer>D. last</answer>"]
    mv = score(records, outputs, "mvbench")
    assert mv["overall"] == 50.0 and mv["per_group"] == {"x": 50.0, "y": 50.0} and mv["unparsed"] == 1
    thinking = ["<think></think><answer>A</answer>", "<think>Blue. Wait, red.</think><answer>C</answer>"]
    rates = score(records[:2], thinking, "mvbench")  # the evaluation JSON's behaviour rates
    assert (rates["shortcut_rate"], rates["reflection_rate"]) == (0.5, 0.5)
    unbalanced = [
        _record(0, "A", task="x"),
        _record(1, "A", task="x"),
        _record(2, "A", task="x"),
        _record(3, "B", task="y"),
    ]
    out = ["<answer>A</answer>"] * 4
    assert score(unbalanced, out, "mvbench")["overall"] == 75.0  # micro
    assert score(unbalanced, out, "mlvu")["overall"] == 50.0  # macro over tasks
    mmvu = [_record(i, "E", options=5) for i in range(3)]
    result = score(mmvu, ["<answer>E</answer>", "<answer>e</answer>", "<answer></answer>"], "mmvu")
    assert result["overall"] == pytest.approx(200 / 3) and result["unparsed"] == 1
    vm = score(
        [_record(0, "A", duration="short"), _record(1, "A", duration="long")],
        ["<answer>A</answer>", "<answer>B</answer>"],
        "videomme",
    )
    assert vm["per_group"] == {"long": 0.0, "short": 100.0}
    guessed = score(records, outputs, "mvbench", protocol="original", seed=1)
    assert guessed["unparsed"] == 1 and guessed["items"][2]["prediction"] in "ABCD" and guessed["items"][2]["guessed"]
    assert "unparsed answers (counted wrong): 1 of 4" in format_table(mv)


def test_demo_pipeline_runs_end_to_end_quick(tmp_path):
    from jax_tinyr1.demo import run

    summary = run(tmp_path / "demo", quick=True)
    out = tmp_path / "demo"
    for stage in ("base", "coldstart", "grpo"):
        assert (out / stage / "final" / "config.json").is_file()
        assert (out / stage / "final" / "tokenizer").is_dir()
    assert (out / "grpo" / "reward.png").is_file() and (out / "grpo" / "tensorboard").is_dir()
    assert summary["eval_count"] == 8
    assert 0 <= summary["r1_unparsed"] <= 8 and 0.0 <= summary["r1_accuracy"] <= 100.0
    results = json.loads((out / "summary.json").read_text())
    assert results == json.loads(json.dumps(summary))
    required = {"sft_accuracy", "coldstart_accuracy", "r1_accuracy", "reward_first", "reward_last", "length_first"}
    assert required | {"length_last", "seconds"} <= set(results)
    metrics = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and results["reward_first"] == metrics[0]["reward"]  # first fifth of 4 steps: 1
    assert results["length_last"] == metrics[-1]["completions/mean_length"]
    table = (out / "summary.md").read_text()
    assert f"| R1 (GRPO) | reason, then answer | {results['r1_accuracy']:.1f} |" in table
    assert f"reward {results['reward_first']:.2f} -> {results['reward_last']:.2f}" in table
    # Several runs in one plot (one line each, raw faint, moving average bold).
    from jax_tinyr1.plot import main as plot_main
    from jax_tinyr1.train.plot import moving_average, run_labels

    assert plot_main([str(out / "base"), str(out / "grpo"), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "reward.png").is_file() and (tmp_path / "plots" / "response_length.png").is_file()
    np.testing.assert_allclose(moving_average([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    assert run_labels([Path("r/seed_0/grpo"), Path("r/seed_1/grpo")]) == ["seed_0/grpo", "seed_1/grpo"]


def test_progress_without_a_terminal_is_one_line_per_tenth(tmp_path, capsys):
    from jax_tinyr1.train.logging import MetricsLogger

    logger = MetricsLogger(tmp_path, total_steps=20)
    for step in range(1, 21):
        logger.log(step, {"reward": 0.5, "kl": 0.01})
    logger.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 10 and lines[0].startswith("step 2/20 reward=0.5 kl=0.01 (") and "\r" not in "".join(lines)
    assert lines[-1].startswith("step 20/20")
