"""TinyLLaVA-Video: frames -> SigLIP -> group resampler -> visual tokens spliced into the
prompt at the image placeholder -> Qwen2.

The model owns the whole multimodal input path, one named method per stage, used by
training, evaluation, the benches and `ask`:

    frames [B, F, Y, X, 3] --vision_features--> features [B, P, E]       (SigLIP, every frame)
                           --visual_tokens-->   visual tokens [B, M, D]  (the connector)
                           --embed_inputs-->    prompt embeddings [B, T-1+M, D] (spliced in)

`encode_video` is the first two. Positions are a plain 0..N-1 range over the spliced
sequence. Which parts train is the trainer's `trainable` switch, not a model setting.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jax_tinyr1.data.template import IMAGE_TOKEN_INDEX
from jax_tinyr1.model.connector import ConnectorConfig, GroupResampler
from jax_tinyr1.model.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM
from jax_tinyr1.model.siglip import SiglipConfig, SiglipVisionModel


@dataclasses.dataclass(frozen=True)
class TinyLlavaConfig:
    llm: Qwen2Config
    vision: SiglipConfig
    connector: ConnectorConfig
    num_frames: int = 16
    image_token_index: int = IMAGE_TOKEN_INDEX

    def __post_init__(self):
        if self.connector.vision_hidden_size != self.vision.hidden_size:
            raise ValueError(
                f"connector.vision_hidden_size {self.connector.vision_hidden_size} != "
                f"vision.hidden_size {self.vision.hidden_size}"
            )
        if self.connector.hidden_size != self.llm.hidden_size:
            raise ValueError(
                f"connector.hidden_size {self.connector.hidden_size} != llm.hidden_size {self.llm.hidden_size}"
            )
        if self.num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {self.num_frames}")

    @property
    def num_visual_tokens(self) -> int:
        return self.connector.num_queries


def splice_positions(input_ids_bt: jax.Array, num_visual: int, image_token_index: int = IMAGE_TOKEN_INDEX):
    """For the spliced sequence of length T - 1 + M (M visual tokens): which output slots are visual, and for
    each slot the source index into the text (or into the visual block). Every row holds
    exactly one placeholder (the template guarantees it)."""
    _b, t = input_ids_bt.shape
    p_b1 = jnp.argmax(input_ids_bt == image_token_index, axis=1)[:, None]
    j = jnp.arange(t - 1 + num_visual)[None, :]
    is_visual = (j >= p_b1) & (j < p_b1 + num_visual)
    text_index = jnp.where(j < p_b1, j, j - num_visual + 1)
    return is_visual, jnp.clip(text_index, 0, t - 1), jnp.clip(j - p_b1, 0, num_visual - 1)


def splice_tokens(
    values_bt: jax.Array,
    input_ids_bt: jax.Array,
    num_visual: int,
    fill: int,
    image_token_index: int = IMAGE_TOKEN_INDEX,
) -> jax.Array:
    """Integer per-token arrays (labels, masks) laid out like the spliced sequence; visual
    slots get `fill`."""
    is_visual, text_index, _ = splice_positions(input_ids_bt, num_visual, image_token_index)
    return jnp.where(is_visual, fill, jnp.take_along_axis(values_bt, text_index, axis=1))


class TinyLlavaVideo(nnx.Module):
    def __init__(self, config: TinyLlavaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.vision = SiglipVisionModel(config.vision, rngs=rngs)
        self.connector = GroupResampler(config.connector, rngs=rngs)
        self.llm = Qwen2ForCausalLM(config.llm, rngs=rngs)

    def init_adapters(self, rngs: nnx.Rngs) -> None:
        """(Re)create the adapters of the language model and the connector (model/lora.py)."""
        self.llm.init_adapters(rngs)
        self.connector.init_adapters(rngs)

    def vision_features(self, pixels_bfyx3: jax.Array) -> jax.Array:
        """Preprocessed frames [B, F, Y, X, 3] -> the vision tower's features of every frame,
        laid end to end [B, P, E] (P = F x patches per frame)."""
        b, f = pixels_bfyx3.shape[:2]
        features = self.vision(pixels_bfyx3.reshape(b * f, *pixels_bfyx3.shape[2:]))
        return features.reshape(b, f * features.shape[1], features.shape[2])

    def visual_tokens(self, features_bpe: jax.Array) -> jax.Array:
        """Vision features [B, P, E] -> visual tokens [B, M, D] (the group resampler)."""
        return self.connector(features_bpe)

    def encode_video(self, pixels_bfyx3: jax.Array) -> jax.Array:
        """Preprocessed frames [B, F, Y, X, 3] -> visual tokens [B, M, D]."""
        return self.visual_tokens(self.vision_features(pixels_bfyx3))

    def embed_inputs(self, input_ids_bt: jax.Array, attention_mask_bt: jax.Array | None, visual_bmd: jax.Array):
        """(input embeddings [B, T-1+M, D], attention mask) with the visual block spliced in."""
        v = visual_bmd.shape[1]
        if attention_mask_bt is None:
            attention_mask_bt = jnp.ones(input_ids_bt.shape, jnp.int32)
        is_visual, text_index, visual_index = splice_positions(input_ids_bt, v, self.config.image_token_index)
        safe_ids = jnp.where(input_ids_bt == self.config.image_token_index, 0, input_ids_bt)
        text = self.llm.embed_tokens(jnp.take_along_axis(safe_ids, text_index, axis=1))
        visual = jnp.take_along_axis(visual_bmd.astype(text.dtype), visual_index[..., None], axis=1)
        embeds = jnp.where(is_visual[..., None], visual, text)
        mask = jnp.where(is_visual, 1, jnp.take_along_axis(attention_mask_bt.astype(jnp.int32), text_index, axis=1))
        return embeds, mask

    def hidden_states(
        self, input_ids, attention_mask=None, *, pixels=None, visual_embeds=None, cache: KVCache | None = None
    ):
        if (pixels is None) == (visual_embeds is None):
            raise ValueError("pass exactly one of pixels and visual_embeds")
        visual = self.encode_video(pixels) if visual_embeds is None else visual_embeds
        embeds, mask = self.embed_inputs(input_ids, attention_mask, visual)
        h, cache = self.llm.hidden_states(inputs_embeds=embeds, attention_mask=mask, cache=cache)
        return h, mask, cache

    def __call__(self, input_ids, attention_mask=None, *, pixels=None, visual_embeds=None):
        """Logits [B, T-1+M, V] over the spliced sequence (text with one placeholder)."""
        h, _, _ = self.hidden_states(input_ids, attention_mask, pixels=pixels, visual_embeds=visual_embeds)
        return self.llm.logits_from_hidden(h)
