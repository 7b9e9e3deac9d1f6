"""Which TinyLLaVA-Video a run starts from, and the run's numeric settings applied to it.

A preset or a converted checkpoint's config.json gives the shapes; the run gives the
numerics (compute dtype, master-weight dtype, rematerialisation, scan unroll). Both sources
get the settings the same way, so the paper's `dtype: bfloat16` and `remat: true` apply to
the converted cold-start checkpoint exactly as to a preset. `resolve()` reads config.json
only (no weights): the memory plan builds from it with abstract shapes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jax_tinyr1.cli import ConfigError
from jax_tinyr1.model.checkpoint import build_model, load_pretrained
from jax_tinyr1.model.config_io import CONFIG_FILE, load_model_config
from jax_tinyr1.model.lora import LoraConfig, has_adapters, same_adapters
from jax_tinyr1.model.presets import get_preset
from jax_tinyr1.model.qwen2 import REMAT_POLICIES
from jax_tinyr1.model.registry import type_of
from jax_tinyr1.model.tinyllava import TinyLlavaConfig
from jax_tinyr1.model.validation import require_dtype

DEFAULT_PRESET = "tinyllava-video-tiny"  # the embedded default: runs anywhere, on CPU
DEFAULT_REMAT_POLICY = "nothing_saveable"  # the paper's gradient checkpointing: each layer recomputed whole


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    preset: str | None = None  # a named config (random init); neither given: the embedded tiny one
    checkpoint: str | None = None  # a converted checkpoint directory (excludes `preset`)
    dtype: str = "float32"  # compute dtype of all three parts
    param_dtype: str = "float32"  # master weights (and what the optimizer updates)
    remat: bool = False  # recompute each language-model layer in the backward pass
    # What the backward pass keeps of each layer (qwen2.REMAT_POLICIES); None: nothing_saveable
    remat_policy: str | None = None
    scan_unroll: int = 1  # language-model layers per scan iteration

    def __post_init__(self):
        if self.preset and self.checkpoint:
            raise ConfigError("model.preset and model.checkpoint exclude each other: give one")
        for name in ("dtype", "param_dtype"):
            require_dtype(f"model.{name}", getattr(self, name))
        if self.remat_policy is not None and not self.remat:
            raise ConfigError("model.remat_policy: model.remat is false, so no layer is rematerialised")
        if self.remat_policy is not None and self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"model.remat_policy: one of {sorted(REMAT_POLICIES)}, got {self.remat_policy!r}")
        if self.scan_unroll < 1:
            raise ConfigError(f"model.scan_unroll: must be >= 1, got {self.scan_unroll}")

    def source_config(self) -> TinyLlavaConfig:
        """The shapes: the checkpoint's config.json (no weights read) or the preset."""
        if self.checkpoint:
            path = Path(self.checkpoint)
            if not (path / CONFIG_FILE).is_file():
                raise FileNotFoundError(
                    f"model.checkpoint: {path / CONFIG_FILE} not found (convert a checkpoint there with "
                    "checkpoints_convert.hf_to_flax, or, for --plan, name the shapes alone: model.preset=NAME)"
                )
            config, _ = load_model_config(path)
            if not isinstance(config, TinyLlavaConfig):
                raise ConfigError(
                    f"model.checkpoint: {path} holds a {type_of(config).name!r} model, not a TinyLLaVA-Video"
                )
            return config
        preset = self.preset or DEFAULT_PRESET
        try:
            config = get_preset(preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {e.args[0]}") from None
        if not isinstance(config, TinyLlavaConfig):
            raise ConfigError(f"model.preset: {preset!r} is not a TinyLLaVA-Video preset")
        return config

    def apply(self, config: TinyLlavaConfig, lora: LoraConfig = LoraConfig()) -> TinyLlavaConfig:
        """The run's numerics on `config`; with `lora`, adapters of their own dtype
        (`param_dtype`) on a frozen base held in the compute dtype (no float32 copy of what
        does not train), the connector trained in full in `param_dtype` when it trains."""
        master = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        frozen = {"dtype": self.dtype, "param_dtype": self.dtype} if lora.enabled else master
        llm_lora, connector_lora = {}, {}
        if lora.enabled:
            adapter = {"lora_rank": lora.rank, "lora_alpha": lora.alpha, "lora_param_dtype": self.param_dtype}
            llm_lora = {**adapter, "lora_dropout": lora.dropout, "lora_targets": tuple(lora.targets)}
            connector_lora = adapter if lora.connector == "lora" else {"lora_rank": 0}
        return dataclasses.replace(
            config,
            llm=dataclasses.replace(
                config.llm,
                **frozen,
                **llm_lora,
                remat=self.remat,
                remat_policy=self.effective_remat_policy,
                scan_unroll=self.scan_unroll,
            ),
            vision=dataclasses.replace(config.vision, **frozen),
            connector=dataclasses.replace(
                config.connector, **(master if lora.connector == "full" else frozen), **connector_lora
            ),
        )

    @property
    def effective_remat_policy(self) -> str:
        return self.remat_policy or DEFAULT_REMAT_POLICY

    def resolve(self, lora: LoraConfig = LoraConfig()) -> TinyLlavaConfig:
        source = self.source_config()
        if has_adapters(source) and not (lora.enabled and same_adapters(source, self.apply(source, lora))):
            raise ConfigError(
                f"model.checkpoint: {self.checkpoint} holds LoRA adapters (rank {source.llm.lora_rank}, targets "
                f"{list(source.llm.lora_targets)}); a run from it sets the same lora section, or starts from the "
                "merged model (checkpoints_convert.flax_to_hf --merge-lora, then hf_to_flax)"
            )
        return self.apply(source, lora)

    def build(self, *, seed: int = 0, mesh=None, lora: LoraConfig = LoraConfig()):
        """(model, config): the checkpoint's weights (cast to `param_dtype`) or a random init;
        adapters the checkpoint does not hold start as LoRA starts (B = 0), from `seed`."""
        config = self.resolve(lora)
        if self.checkpoint:
            model, _ = load_pretrained(self.checkpoint, mesh=mesh, config=config, adapter_seed=seed)
            return model, config
        return build_model(config, seed=seed), config

    @classmethod
    def for_inference(cls, dtype: str) -> ModelSpec:
        """Numerics of a model that only answers: parameters held in the compute dtype (no
        float32 master copies when nothing is trained)."""
        return cls(dtype=dtype, param_dtype=dtype)

    def settings(self) -> dict[str, object]:
        """What the run computes with (printed at start, stored with the run)."""
        return {
            "source": self.checkpoint or f"preset {self.preset or DEFAULT_PRESET}",
            "compute_dtype": self.dtype,
            "master_weight_dtype": self.param_dtype,
            "remat": self.effective_remat_policy if self.remat else False,
            "scan_unroll": self.scan_unroll,
        }


def load_for_inference(checkpoint, dtype: str | None = None, *, mesh=None):
    """(model, config) of a checkpoint to answer with: its weights read straight into the
    compute dtype (`dtype`, default the checkpoint's own), a few parameters at a time."""
    stored, _ = load_model_config(checkpoint)
    if dtype is not None:
        require_dtype("--dtype", dtype)
    numerics = ModelSpec.for_inference(dtype or stored.llm.dtype)
    config = numerics.apply(stored) if isinstance(stored, TinyLlavaConfig) else stored
    return load_pretrained(checkpoint, mesh=mesh, config=config)
