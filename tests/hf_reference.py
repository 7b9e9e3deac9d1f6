"""Reference PyTorch models built from small random configs, saved as HF directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

from checkpoints_convert import hf_to_flax
from jax_tinyr1.model import load_pretrained


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def random_qwen2(directory: Path, seed: int = 0, dtype=torch.float32, **config) -> transformers.Qwen2ForCausalLM:
    """A random HF Qwen2 saved to `directory`. Weights get a larger spread than HF's init so
    that logits are not all near zero (a harder parity test)."""
    torch.manual_seed(seed)
    values = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )
    values.update(config)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**values)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model = model.to(dtype)
    model.save_pretrained(directory)
    return model


def convert_and_load(hf_dir: Path, out_dir: Path, model_type: str = "qwen2"):
    hf_to_flax.main(["--model-type", model_type, "--hf-dir", str(hf_dir), "--out", str(out_dir)])
    return load_pretrained(out_dir)


def torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids), **kwargs).logits.float().numpy()
