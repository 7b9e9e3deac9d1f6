"""Checkpoints converted once and kept: a hub id (`Zhang199/TinyLLaVA-Video-R1`) or a local
directory in the Hugging Face layout becomes a jax_tinyr1 checkpoint under JAX_TINYR1_CACHE
(default ~/.cache/jax_tinyr1), reused afterwards. `weights=False` converts the config alone,
which is all `--plan` reads: the published diff-only config.json filled with transformers'
defaults exactly as `hf_to_flax` fills it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from checkpoints_convert.families import get_family
from checkpoints_convert.hub import HUB_FILES, download, hub_id
from jax_tinyr1.model.config_io import CONFIG_FILE, is_hf_config, save_model_config
from jax_tinyr1.model.registry import type_from_hf


def converted_cache() -> Path:
    return Path(os.environ.get("JAX_TINYR1_CACHE", "~/.cache/jax_tinyr1")).expanduser() / "converted"


def _config_only(hf_config_path: Path, out: Path) -> Path:
    hf = json.loads(hf_config_path.read_text())
    config, passthrough = get_family(type_from_hf(hf, hf_config_path).name).config_from_hf(hf)
    out.mkdir(parents=True, exist_ok=True)
    save_model_config(out, config, hf_passthrough=passthrough)
    return out


def converted_checkpoint(spec: str, *, weights: bool = True) -> Path:
    """`spec` as a jax_tinyr1 checkpoint directory. A hub id: its snapshot converted once into
    the cache and reused. A local directory of ours: itself. A local directory in the Hugging
    Face layout: its config alone converted (keyed by the file's contents) when `weights` is
    False; with weights, the user converts it with hf_to_flax (a conversion writes a
    checkpoint the size of the model, which should go where the user says)."""
    found = hub_id(spec)
    if found is None:
        local = Path(spec)
        if weights or not is_hf_config(local / CONFIG_FILE):
            return local
        digest = hashlib.sha256((local / CONFIG_FILE).read_bytes()).hexdigest()[:16]
        out = converted_cache() / f"local-config-{digest}"
        return out if (out / CONFIG_FILE).is_file() else _config_only(local / CONFIG_FILE, out)
    snapshot = download(*found, files=HUB_FILES if weights else ["config.json"])
    out = converted_cache() / f"{found[0].replace('/', '--')}@{snapshot.name}{'' if weights else '-config'}"
    if (out / CONFIG_FILE).is_file():
        return out
    if weights:
        # Imported here: the converter brings JAX and orbax, which a plan from a hub id's config
        # (and an entry point's argument checks before this call) should not wait for.
        from checkpoints_convert import hf_to_flax

        hf_to_flax.convert(None, snapshot, out, overwrite=True)
        return out
    return _config_only(snapshot / "config.json", out)
