"""PyTorch references written from ../shared/reference/original-system.md (not from our code):
the group resampler, and the whole TinyLLaVA-Video forward composed of HF SigLIP, that
resampler and HF Qwen2, spliced as the original splices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import transformers
from torch import nn


class PerceiverAttention(nn.Module):
    def __init__(self, dim, dim_head, heads):
        super().__init__()
        self.heads, self.scale, inner = heads, dim_head**-0.5, dim_head * heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media, latents):  # [b, n, D], [b, q, D]
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        b, h = q.shape[0], self.heads

        def split(x):  # "b n (h d) -> b h n d"
            return x.reshape(b, x.shape[1], h, -1).transpose(1, 2)

        q, k, v = split(q) * self.scale, split(k), split(v)
        sim = q @ k.transpose(-1, -2)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
        return self.to_out(out)


def positional_table(seq_len, d):
    pe = torch.zeros(seq_len, d, dtype=torch.float16)
    position = torch.arange(0, seq_len).unsqueeze(1).float()
    div_term = torch.exp(torch.arange(0, d, 2).float() * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class Resampler(nn.Module):
    def __init__(self, vision_dim, dim, num_queries, groups, depth, dim_head, heads, ff_mult=4):
        super().__init__()
        self.groups = groups
        self.latents = nn.Parameter(torch.randn(num_queries // groups, dim))
        self.linear = nn.Linear(vision_dim, dim)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PerceiverAttention(dim, dim_head, heads),
                        nn.Sequential(
                            nn.LayerNorm(dim),
                            nn.Linear(dim, dim * ff_mult, bias=False),
                            nn.GELU(),
                            nn.Linear(dim * ff_mult, dim, bias=False),
                        ),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.linear(x)
        n = x.shape[1]
        sizes = [n // self.groups + 1] * (n % self.groups) + [n // self.groups] * (self.groups - n % self.groups)
        outs = []
        for chunk in torch.split(x, sizes, dim=1):
            latents = self.latents[None].expand(x.shape[0], -1, -1)
            for attn, ff in self.layers:
                latents = attn(chunk, latents) + latents
                latents = ff(latents) + latents
            outs.append(self.norm(latents))
        frames = torch.cat(outs, dim=1)
        return frames + positional_table(frames.shape[1], frames.shape[2]).to(frames.dtype)


def randomize_(module: nn.Module, seed: int, spread: float = 0.08):
    """Weights with more spread than the default inits (norms near 1), for harder parity tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or "layer_norm" in name or name.endswith(("1.0.weight", "1.0.bias")):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(spread * noise)


class TorchTinyLlava(nn.Module):
    """The original's composition: SigLIP hidden_states[-2] minus index 0 -> resampler -> spliced
    into Qwen2's input embeddings at the -200 placeholder, right padded."""

    def __init__(self, text_config: dict, vision_config: dict, connector: dict, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.language_model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**text_config))
        self.vision_tower = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision_config))
        self.connector = Resampler(vision_config["hidden_size"], text_config["hidden_size"], **connector)
        randomize_(self, seed)
        self.eval()
        self.text_config, self.vision_config, self.connector_config = text_config, vision_config, connector

    def visual(self, pixels_bfchw):
        b, f = pixels_bfchw.shape[:2]
        out = self.vision_tower(pixels_bfchw.flatten(0, 1), output_hidden_states=True)
        feats = out.hidden_states[-2][:, 1:]
        return self.connector(feats.reshape(b, f * feats.shape[1], feats.shape[2]))

    @torch.no_grad()
    def forward(self, rows: list[list[int]], pixels_bfchw):
        visual = self.visual(pixels_bfchw)
        embed = self.language_model.get_input_embeddings()
        seqs = []
        for ids, vis in zip(rows, visual, strict=True):
            p = ids.index(-200)
            seqs.append(torch.cat([embed(torch.tensor(ids[:p])), vis, embed(torch.tensor(ids[p + 1 :]))]))
        n = max(s.shape[0] for s in seqs)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        padded = torch.zeros(len(seqs), n, seqs[0].shape[1])
        for i, s in enumerate(seqs):
            padded[i, : s.shape[0]], mask[i, : s.shape[0]] = s, 1
        return self.language_model(inputs_embeds=padded, attention_mask=mask).logits.numpy(), mask.numpy()

    def save_original_layout(self, directory: Path, dtype=torch.float32):
        """The original combined checkpoint: its key names and config.json fields."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for key, value in self.state_dict().items():
            if key.startswith("vision_tower."):
                key = "vision_tower._vision_tower.vision_model." + key[len("vision_tower.") :]
            elif key.startswith("connector."):
                key = "connector._connector." + key[len("connector.") :]
            if key == "language_model.lm_head.weight" and self.text_config.get("tie_word_embeddings"):
                continue
            tensors[key] = value.to(dtype).contiguous()
        safetensors.torch.save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        config = {
            "architectures": ["TinyLlavaForConditionalGeneration"],
            "model_type": "tinyllava",
            "connector_type": "groupresampler",
            "group": self.connector_config["groups"],
            "num_queries": self.connector_config["num_queries"],
            "num_resampler_layers": self.connector_config["depth"],
            "hidden_size": self.text_config["hidden_size"],
            "image_token_index": -200,
            "ignore_index": -100,
            "tokenizer_model_max_length": 3072,
            "tokenizer_padding_side": "right",
            "text_config": {"model_type": "qwen2", **self.text_config},
            "vision_config": {"model_type": "siglip_vision_model", **self.vision_config},
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "patch",
            "vision_hidden_size": self.vision_config["hidden_size"],
            "num_frames": 4,
            "resampler_heads": self.connector_config["heads"],
            "resampler_dim_head": self.connector_config["dim_head"],
        }
        (directory / "config.json").write_text(json.dumps(config))
        return tensors


def nchw(pixels_byx3: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(np.moveaxis(pixels_byx3, -1, -3)))
