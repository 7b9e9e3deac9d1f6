"""A small byte-level BPE tokenizer built locally, in HF format, for tests and the demo.

No Qwen tokenizer can be downloaded here. This one behaves the same way for our purposes:
byte-level BPE (any text round-trips), `<|endoftext|>` as its only special token, used as
both pad and eos, `<think>`/`<answer>` as plain text. The real Qwen2.5 tokenizer directory
loads through the same `AutoTokenizer.from_pretrained(path)` call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# transformers advises at import that PyTorch is missing; this project needs only its
# tokenizers, so a JAX user without torch should not read that at every start.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jax_tinyr1.data.template import EOS_TOKEN


def build_tokenizer(corpus: Iterable[str], out_dir: Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus`, save it to `out_dir` (HF format) and load it back."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, padding_side="right", model_max_length=3072
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


CHECKPOINT_TOKENIZER = "tokenizer"  # a model directory's own tokenizer: every entry point's default


def checkpoint_tokenizer(checkpoint) -> Path:
    return Path(checkpoint) / CHECKPOINT_TOKENIZER


def load_tokenizer(directory: Path):
    """A tokenizer from a local directory only (never a hub download, never remote code)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: tokenizer directory not found")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
