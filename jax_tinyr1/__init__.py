"""jax_tinyr1: TinyLLaVA-Video-R1 in JAX/Flax.

Packages, in the order imports run (each imports only those above it; tests/test_import_order.py
holds this): data -> model (checkpoints_convert beside it) -> generate -> rewards, update ->
grpo, sft -> train -> eval -> demo.

Shape suffixes. An array named `x_btd` has shape [B, T, D]; every letter means one thing
across the package:

    B  batch: the rows a function is given (prompts, examples, or completions)
    R  completion rows of a GRPO step: prompts x G
    G  completions sampled per prompt (the group)
    T  tokens of a sequence (a prompt's or a completion's: the name says which)
    S  key/value slots attended over (the KV cache's length)
    C  chunks (or blocks) a sequence or the vocabulary is cut into; J  entries of one chunk
    L  decoder layers
    D  language-model width;  V  vocabulary
    N  query heads;  K  key/value heads;  A  query heads per key/value head (N / K);  H  head dim
    M  visual tokens (the connector's output, spliced into the prompt)
    F  frames;  Y, X  image rows, columns;  3  the RGB channels
    P  vision tokens (patches of one image, or of all frames laid end to end);  E  vision width
    U  the connector's groups of queries;  Q  its queries per group
    I, O  a kernel's input and output features
    1  a broadcast axis of size 1

Dtypes are named by the strings of `model.layers.DTYPES` everywhere (configs, checkpoints,
exports).
"""

from jax_tinyr1 import platform as _platform

_platform.configure()  # before JAX compiles anything: the GPU flags, and a quiet CUDA plugin without a GPU
