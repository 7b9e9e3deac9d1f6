"""Config fields that a run fills in itself (from the model, the tokenizer, the step count,
the stage): marked here, refused as YAML keys by train/config.py, since a value given there
would be overwritten."""

from __future__ import annotations

import dataclasses

DERIVED = "derived"


def derived(default, source: str):
    """A dataclass field set by the run from `source` (named in the error for a YAML key)."""
    return dataclasses.field(default=default, metadata={DERIVED: source})
