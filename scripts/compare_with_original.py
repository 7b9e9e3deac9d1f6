"""Check an export of ours in the original PyTorch code: same logits for a video question.

Two halves, each run in its own environment:

    # ours (this project's environment): float32 logits of a random 16-frame clip and a
    # question, from our checkpoint, into REF.npz
    python scripts/compare_with_original.py ours --checkpoint CKPT --out REF.npz

    # the original's (a checkout of github.com/ZhangXJ199/TinyLLaVA-Video-R1 and its
    # transformers 4.49): load EXPORT (flax_to_hf --model-type tinyllava of CKPT) with its
    # TinyLlavaForConditionalGeneration.from_pretrained and compare
    python scripts/compare_with_original.py original --repo TinyLLaVA-Video-R1 --export EXPORT --reference REF.npz

The original imports deepspeed for training only and builds its resampler's position table
on 'cuda'; the second half stands in an empty deepspeed module and puts those tensors on the
CPU (same dtypes), so that the model classes import and run on a machine without either. It
prints the largest relative error of the logits and of the visual tokens.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np


def ours(checkpoint: Path, out: Path, seed: int) -> None:
    import jax.numpy as jnp

    from jax_tinyr1.data.template import grpo_question, prompt_ids
    from jax_tinyr1.data.tokenizer import checkpoint_tokenizer, load_tokenizer
    from jax_tinyr1.model.spec import load_for_inference

    model, config = load_for_inference(checkpoint, "float32")
    tokenizer = load_tokenizer(checkpoint_tokenizer(checkpoint))
    ids = np.asarray([prompt_ids(tokenizer, grpo_question("What colour is the screen?\nA. red\nB. blue"))], np.int32)
    size = config.vision.image_size
    pixels = np.random.default_rng(seed).uniform(-1, 1, (1, config.num_frames, size, size, 3)).astype(np.float32)
    visual = model.encode_video(jnp.asarray(pixels))
    embeds, mask = model.embed_inputs(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)), visual)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask)
    np.savez(out, ids=ids, pixels=pixels, visual=np.asarray(visual), logits=np.asarray(logits))
    print(f"wrote {out}: logits {tuple(logits.shape)}")


def _import_original(repo: Path):
    sys.path.insert(0, str(repo))
    zero = "deepspeed.runtime.zero"
    for name in ("deepspeed", "deepspeed.runtime", zero, f"{zero}.partition_parameters"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
    sys.modules["deepspeed"].zero = types.SimpleNamespace()
    sys.modules[f"{zero}.partition_parameters"].ZeroParamStatus = None
    import torch

    def on_cpu(make):
        return lambda *a, **k: make(*a, **({**k, "device": "cpu"} if k.get("device") == "cuda" else k))

    torch.zeros, torch.arange, torch.Tensor.to = on_cpu(torch.zeros), on_cpu(torch.arange), on_cpu(torch.Tensor.to)
    from tinyllava.model import TinyLlavaForConditionalGeneration

    return torch, TinyLlavaForConditionalGeneration


def original(repo: Path, export: Path, reference: Path) -> float:
    torch, model_class = _import_original(repo)
    model = model_class.from_pretrained(str(export), torch_dtype=torch.float32).eval()
    parts = (model.language_model, model.vision_tower, model.connector, model.tokenizer)
    print("loaded:", ", ".join(type(p).__name__ for p in parts))
    ref = np.load(reference)
    ids = torch.tensor(ref["ids"], dtype=torch.long)
    video = torch.tensor(ref["pixels"]).permute(0, 1, 4, 2, 3)  # [B, F, 3, H, W], as the original reads videos
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), video=video).logits.numpy()
        visual = model.encode_videos(video).float().numpy()
    errors = {
        "logits": np.abs(ref["logits"] - logits).max() / np.abs(logits).max(),
        "visual tokens": np.abs(ref["visual"].reshape(visual.shape) - visual).max() / np.abs(visual).max(),
    }
    for name, error in errors.items():
        print(f"{name}: max relative error {error:.2e}")
    return max(errors.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="half", required=True)
    a = sub.add_parser("ours")
    a.add_argument("--checkpoint", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("original")
    b.add_argument("--repo", type=Path, required=True, help="a checkout of TinyLLaVA-Video-R1")
    b.add_argument("--export", type=Path, required=True)
    b.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.half == "ours":
        ours(args.checkpoint, args.out, args.seed)
        return 0
    return 0 if original(args.repo, args.export, args.reference) <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
