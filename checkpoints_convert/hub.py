"""Hub ids (`Zhang199/TinyLLaVA-Video-R1[@revision]`) as sources of a conversion.

`huggingface_hub.snapshot_download` brings the files a conversion reads (configs, safetensors
weights, tokenizer files; never a pickle) into its cache and returns the snapshot directory;
with `HF_HUB_OFFLINE=1` it only looks in the cache. A local directory always wins over a hub
id of the same spelling.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jax_tinyr1.cli import CheckpointError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# What a conversion reads: no *.bin / *.pt / *.pth (pickles), no other formats.
HUB_FILES = ["*.json", "*.safetensors", "merges.txt", "vocab.json", "chat_template.jinja"]


def hub_id(spec: str | Path) -> tuple[str, str | None] | None:
    """(repository, revision) when `spec` names a hub repository and no local path."""
    text = str(spec)
    if Path(text).exists() or text.startswith((".", "/", "~")):
        return None
    found = HUB_ID.match(text)
    return (found.group("repo"), found.group("revision")) if found else None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo: str, revision: str | None = None, files: list[str] = HUB_FILES) -> Path:
    """The local snapshot of `repo` (downloaded unless cached; from the cache only when
    offline), with the files a conversion needs."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo}@{revision}" if revision else repo
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=files, local_files_only=offline()))
    except LocalEntryNotFoundError:
        # Raised both in offline mode and when the hub cannot be reached: say which.
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub could not be reached (no network?)"
        fix = "unset HF_HUB_OFFLINE" if offline() else "check the network or a proxy setting"
        raise CheckpointError(
            f"{where}: not in the hub cache ({cache}) and {why} (nor a local directory); download it where the hub "
            f"is reachable (hf download {repo} --local-dir DIR, then pass DIR) or {fix}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise CheckpointError(
            f"{where}: no such local directory, nor repository on the hub ({type(e).__name__})"
        ) from None


def resolve_hf_dir(spec: str | Path) -> Path:
    """A local directory as it is; a hub id as its downloaded snapshot."""
    found = hub_id(spec)
    return Path(spec) if found is None else download(*found)
