"""LoRA adapters (jax_tinyr1/model/lora.py) out of and into our checkpoints.

Out, two ways (flax_to_hf): `--merge-lora` folds every adapter into its kernel,
W + (A @ B) * alpha / rank in float32, so every layout we export holds a plain model; and
`--adapter DIR` writes the language model's adapters as a PEFT LoRA adapter
(adapter_config.json + adapter_model.safetensors under PEFT's key names), which `peft`
loads onto the HF Qwen2 model of the base. A TinyLLaVA-Video's connector (trained in full,
by adapters, or not at all: the checkpoint does not say which) goes beside it, merged, in
connector.safetensors under the original combined layout's names.

In (hf_to_flax `--adapter DIR --base CKPT`): the base checkpoint's weights, the adapter's
tensors (checked whole: names, shapes, no others) and the connector file when there is one,
as one of our checkpoints with adapters.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from checkpoints_convert import qwen2, tinyllava
from checkpoints_convert.mapping import export_params, flatten, import_leaves, prefixed
from checkpoints_convert.original_layout import GENERATION_CONFIG
from checkpoints_convert.reading import LazyParams, read_checkpoint
from checkpoints_convert.safetensors_io import SafetensorsReader, write_safetensors
from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.data.tokenizer import checkpoint_tokenizer
from jax_tinyr1.model.checkpoint import abstract_model, save_params_leafwise
from jax_tinyr1.model.config_io import save_model_config
from jax_tinyr1.model.lora import ADAPTERS, CONNECTOR_TARGETS, LLM_TARGETS, has_adapters
from jax_tinyr1.model.qwen2 import Qwen2Config
from jax_tinyr1.model.tinyllava import TinyLlavaConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
CONNECTOR_FILE = "connector.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's names of the wrapped model's tensors


def is_adapter_path(path: str) -> bool:
    return ADAPTERS in path.split("/")


def _llm(config) -> tuple[Qwen2Config, str]:
    """The language model's config and its path prefix in the checkpoint's tree."""
    return (config.llm, "llm/") if isinstance(config, TinyLlavaConfig) else (config, "")


def adapted_kernels(config) -> dict[str, tuple[str, float]]:
    """kernel path -> (its adapter's path without the _lora_a/_lora_b ending, scale)."""
    llm, prefix = _llm(config)
    out = {}
    s = llm.lora_scale
    out.update({f"{prefix}layers/{t}_kernel": (f"{prefix}{ADAPTERS}/{t}", s) for t in llm.lora_targets})
    connector = getattr(config, "connector", None)
    if connector is not None and connector.lora_rank:
        s = connector.lora_scale
        out.update({f"connector/layers/{n}": (f"connector/{ADAPTERS}/{n}", s) for n in CONNECTOR_TARGETS[1:]})
        out["connector/linear_kernel"] = (f"connector/{ADAPTERS}/linear", s)
    return out


def _merge(kernel, a, b, lora_scale: float) -> np.ndarray:
    delta = np.matmul(a.astype(np.float32), b.astype(np.float32)) * np.float32(lora_scale)
    return kernel.astype(np.float32) + delta


class _MergedStack:
    """A stacked kernel with its adapter folded in, one layer at a time (`[i]`)."""

    def __init__(self, kernel, a, b, lora_scale: float):
        self.kernel, self.a, self.b, self.scale = kernel, a, b, lora_scale

    def __getitem__(self, i: int) -> np.ndarray:
        return _merge(self.kernel[i], self.a[i], self.b[i], self.scale)


class MergedParams(Mapping):
    """The flat parameters of a LoRA checkpoint as those of the plain model: adapted kernels
    merged (a stacked one layer by layer), the adapters themselves gone."""

    def __init__(self, params: LazyParams, config):
        self.params = params
        prefix = params.prefix
        self.adapted = {
            path[len(prefix) :]: (adapter[len(prefix) :], s)
            for path, (adapter, s) in adapted_kernels(config).items()
            if path.startswith(prefix)
        }
        self.shapes = {p: s for p, s in params.shapes.items() if not is_adapter_path(p)}
        self._current = None

    def __getitem__(self, path: str):
        if path not in self.adapted:
            return self.params[path]
        if self._current is None or self._current[0] != path:
            adapter, s = self.adapted[path]
            kernel = self.params[path]  # held here: the lazy reader keeps only its latest
            a, b = self.params[adapter + "_lora_a"], self.params[adapter + "_lora_b"]
            merged = _MergedStack(kernel, a, b, s) if kernel.ndim == 3 else _merge(kernel, a, b, s)
            self._current = (path, merged)
        return self._current[1]

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def peft_config(llm: Qwen2Config) -> dict:
    """adapter_config.json of a PEFT LoRA adapter with our adapters' settings."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": llm.lora_rank,
        "lora_alpha": llm.lora_alpha,
        "lora_dropout": llm.lora_dropout,
        "target_modules": [qwen2.peft_module(t) for t in llm.lora_targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "base_model_name_or_path": None,
        "revision": None,
    }


def write_peft_adapter(checkpoint: Path, out: Path, dtype) -> None:
    """The adapters of one of our checkpoints as a PEFT adapter directory (see module doc)."""
    config, _, params = read_checkpoint(Path(checkpoint), None)
    llm, prefix = _llm(config)
    if not llm.lora_rank:
        raise CheckpointError(f"{checkpoint}: its language model holds no LoRA adapters (nothing for --adapter)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rules = prefixed(qwen2.lora_rules(llm), PEFT_PREFIX, prefix)
    shapes = {p: s for p, s in params.shapes.items() if p.startswith(f"{prefix}{ADAPTERS}/")}
    write_safetensors(out / ADAPTER_FILE, export_params(params, rules, dtype, shapes))
    (out / ADAPTER_CONFIG).write_text(json.dumps(peft_config(llm), indent=2) + "\n")
    if isinstance(config, TinyLlavaConfig):
        connector = MergedParams(LazyParams(params.checkpoint, params.abstract, "connector/"), config)
        rules = prefixed(tinyllava.CONNECTOR_RULES, *tinyllava.CONNECTOR_PREFIX[:1], "")
        write_safetensors(out / CONNECTOR_FILE, export_params(connector, rules, dtype, connector.shapes))


def lora_settings(peft: dict, where: Path) -> dict:
    """Our adapter fields (Qwen2Config.lora_*) from a PEFT adapter_config.json, or a clear
    error for what our adapters cannot be."""
    if peft.get("peft_type") != "LORA":
        raise CheckpointError(f"{where}: peft_type {peft.get('peft_type')!r}: only LORA adapters import")
    for key, ok in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False)):
        if bool(peft.get(key, ok)) != ok:
            raise CheckpointError(f"{where}: {key}={peft[key]!r} is not supported")
    if peft.get("bias", "none") != "none" or peft.get("modules_to_save") or peft.get("layers_to_transform"):
        raise CheckpointError(f"{where}: only adapters on every layer, no bias, no modules_to_save import")
    if peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise CheckpointError(f"{where}: per-module rank_pattern / alpha_pattern are not supported")
    modules = peft.get("target_modules")
    if not isinstance(modules, list):
        raise CheckpointError(f"{where}: target_modules must be a list of module names, got {modules!r}")
    by_name = {qwen2.peft_module(t): t for t in LLM_TARGETS}
    unknown = sorted(set(modules) - set(by_name))
    if unknown:
        raise CheckpointError(f"{where}: target_modules {unknown} are not among {sorted(by_name)}")
    rank = peft.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise CheckpointError(f"{where}: r must be a positive integer, got {rank!r}")
    return {
        "lora_rank": rank,
        "lora_alpha": float(peft.get("lora_alpha", 8)),
        "lora_dropout": float(peft.get("lora_dropout", 0.0)),
        "lora_targets": tuple(t for t in LLM_TARGETS if qwen2.peft_module(t) in modules),  # the layer's order
        "lora_param_dtype": "float32",
    }


def import_peft_adapter(adapter_dir: Path, base: Path, out: Path, *, overwrite: bool = False):
    """Our checkpoint of `base` (one of ours, without adapters) with the PEFT adapter of
    `adapter_dir` (and its connector file, when there is one); returns its config."""
    adapter_dir, base, out = Path(adapter_dir), Path(base), Path(out)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (a PEFT adapter directory holds it)")
    try:
        settings = lora_settings(json.loads(config_path.read_text()), config_path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    base_config, extra, base_params = read_checkpoint(base, None)
    if has_adapters(base_config):
        raise CheckpointError(f"--base {base}: holds adapters already; give the model they were trained on")
    llm, prefix = _llm(base_config)
    llm = dataclasses.replace(llm, **settings)
    config = dataclasses.replace(base_config, llm=llm) if prefix else llm
    abstract = flatten(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    files = [(ADAPTER_FILE, prefixed(qwen2.lora_rules(llm), PEFT_PREFIX, prefix))]
    if prefix and (adapter_dir / CONNECTOR_FILE).is_file():
        files.append((CONNECTOR_FILE, prefixed(tinyllava.CONNECTOR_RULES, *tinyllava.CONNECTOR_PREFIX)))
    # Each file is checked whole (names, shapes, nothing else) here, before anything is written.
    imported = []
    for file, rules in files:
        paths = {r.flax for r in rules}
        reader = SafetensorsReader(adapter_dir, file)
        try:
            imported.append(import_leaves(reader, rules, {p: a for p, a in abstract.items() if p in paths}))
        except CheckpointError as e:
            raise CheckpointError(f"{adapter_dir / file}: {e}") from None
    taken = {r.flax for _, rules in files for r in rules}

    def all_leaves():
        for leaves in imported:
            yield from leaves
        for path in abstract:
            if path not in taken:
                yield path, base_params[path]

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_params_leafwise(out, all_leaves())
    save_model_config(out, config, **extra)
    if checkpoint_tokenizer(base).is_dir():
        shutil.copytree(checkpoint_tokenizer(base), checkpoint_tokenizer(out))
    if (base / GENERATION_CONFIG).is_file():
        shutil.copy2(base / GENERATION_CONFIG, out / GENERATION_CONFIG)
    return config
