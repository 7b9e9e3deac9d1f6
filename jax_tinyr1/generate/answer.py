"""Answers to video questions: batches of (prompt ids, frames) -> completion tokens, through
the model's input path (frames -> visual tokens -> spliced prompt) and the sampler. Used by
evaluation and `ask`; one compiled program per (batch size, prompt width)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_tinyr1.data.loader import pad_rows
from jax_tinyr1.generate.sampler import generate, inference_split
from jax_tinyr1.generate.sampling import SamplingConfig


class Answerer:
    def __init__(self, model, sampling: SamplingConfig, *, pad_multiple: int):
        self.graphdef, self.state = inference_split(model)
        self.sampling, self.pad_multiple = sampling, pad_multiple

        def run(state, ids_bt, mask_bt, pixels_bfyx3, key):
            model = nnx.merge(self.graphdef, state)
            embeds, mask = model.embed_inputs(ids_bt, mask_bt, model.encode_video(pixels_bfyx3))
            out = generate(model.llm, embeds, mask, key, sampling, 1)
            return out.tokens, out.completion_mask

        self._run = jax.jit(run)

    def __call__(self, prompts: list[list[int]], frames: list[np.ndarray], key, *, rows: int) -> list[np.ndarray]:
        """The completion tokens (up to and including EOS) of each prompt. Batches are padded
        to `rows` (filler rows repeat the first prompt) and prompt widths to the padding
        multiple: few shapes, few compilations."""
        fill = rows - len(prompts)
        ids, mask = pad_rows(prompts + [prompts[0]] * fill, self.sampling.pad_id, self.pad_multiple)
        pixels = np.stack(frames + [frames[0]] * fill)
        tokens, cmask = self._run(self.state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels), key)
        tokens, cmask = np.asarray(tokens), np.asarray(cmask)
        return [tokens[i][cmask[i] > 0] for i in range(len(prompts))]
