"""What happens to bad input: `error` stops with a message naming the file (and line), `skip`
drops the item, counts it by kind, logs it, and goes on; `summary()` reports the counts.
Also: data paths must stay inside the data root."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from jax_tinyr1.cli import BadInput, ConfigError

log = logging.getLogger("jax_tinyr1.data")
POLICIES = ("error", "skip")


class DataError(BadInput):
    """A malformed annotation or an unusable sample; the message names file and line/index."""


@dataclass
class BadInputPolicy:
    mode: str = "error"
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in POLICIES:
            raise ConfigError(f"bad-input policy must be one of {POLICIES}, got {self.mode!r}")

    def bad(self, kind: str, message: str) -> None:
        """Raise (error) or record (skip) one bad item."""
        if self.mode == "error":
            raise DataError(message)
        self.counts[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(message)
        log.warning("skipped (%s): %s", kind, message)

    def summary(self) -> str:
        if not self.counts:
            return "bad input: none"
        return "bad input skipped: " + ", ".join(f"{kind}={n}" for kind, n in sorted(self.counts.items()))


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths, `..` that leaves the root and symlinks that
    point outside it."""
    if Path(relative).is_absolute():
        raise DataError(f"{relative!r}: absolute paths are not allowed (data root {root})")
    root_real = Path(root).resolve()
    candidate = Path(root) / relative
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root_real):
        raise DataError(f"{relative!r}: resolves to {resolved}, outside the data root {root_real}")
    return candidate
