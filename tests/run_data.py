"""A small run's inputs: a synthetic video-QA set (real clips) and a tokenizer trained on it."""

import json

from jax_tinyr1.data.synthetic import generate
from jax_tinyr1.data.tokenizer import build_tokenizer


def synthetic_run_root(root, records: int, *, seed: int = 0, cold_start: int = 0):
    """`root/data` (train.jsonl, cold_start.json, videos/) and `root/tok`; returns root."""
    generate(root / "data", records, seed=seed, cold_start=cold_start, frames=6)
    corpus = [json.loads(line)["problem"] for line in (root / "data" / "train.jsonl").read_text().splitlines()]
    build_tokenizer(corpus * 3 + ["<think>x</think><answer>A</answer>"] * 5, root / "tok", vocab_size=300)
    return root
