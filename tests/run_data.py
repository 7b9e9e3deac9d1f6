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


# The published training data (Zhang199/TinyLLaVA-Video-R1-training-data), as the original's
# README lays it out: NextQA/NExTVideo/ videos, nextqa_0-30s.jsonl (GRPO) and
# nextqa-coldstart-16.json (cold start) at the root. Videos are named by the annotations with a
# one-character prefix ("./NextQA/...") in the JSONL and relative to the root in the JSON.
PUBLISHED_VIDEOS = "NextQA/NExTVideo"
PUBLISHED_GRPO = "nextqa_0-30s.jsonl"
PUBLISHED_COLD_START = "nextqa-coldstart-16.json"


def published_data_root(root, records: int, *, cold_start: int, seed: int = 0):
    """`root/data` laid out and named as the published data set (synthetic clips and
    questions in its formats, with a field the loader does not read), and `root/tok`."""
    synthetic_run_root(root / "made", records, seed=seed, cold_start=cold_start)
    made, data = root / "made" / "data", root / "data"
    videos = data / PUBLISHED_VIDEOS
    videos.mkdir(parents=True)
    for clip in sorted((made / "videos").iterdir()):
        clip.rename(videos / clip.name)
    rows = []
    for line in (made / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["video_filename"] = f"./{PUBLISHED_VIDEOS}/{row['video_filename'].rsplit('/', 1)[1]}"
        row["data_source"] = "NextQA"  # a field of no use to training
        rows.append(json.dumps(row))
    (data / PUBLISHED_GRPO).write_text("\n".join(rows) + "\n")
    cold = json.loads((made / "cold_start.json").read_text())
    for item in cold:
        item["video"] = f"{PUBLISHED_VIDEOS}/{item['video'].rsplit('/', 1)[1]}"
    (data / PUBLISHED_COLD_START).write_text(json.dumps(cold, indent=1))
    (root / "made" / "tok").rename(root / "tok")
    return root
