"""What every command does with bad input (a missing or malformed file, a bad value): one line
on stderr naming it and exit code 2. Bad input is what the project's own error classes
(`BadInput` and its subclasses: ConfigError, DataError, VideoDecodeError, CheckpointError,
PlanTargetError) and a missing path (FileNotFoundError and its kin) say; anything else is a
bug, in our code or a library's, and keeps its traceback."""

from __future__ import annotations

import functools
import sys

EXIT_BAD_INPUT = 2
# The dtype names configs, checkpoints, exports and flags use (model.layers.DTYPES maps them to
# JAX's types); here so that an entry point checks its flags before importing JAX.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


class BadInput(ValueError):
    """Input a user can correct: the message names the file, line, key or flag."""


class ConfigError(BadInput):
    """A bad configuration value or command-line flag; the message names the key."""


class CheckpointError(BadInput):
    """A checkpoint that does not match what the model expects (names the file or key)."""


# Paths the user gave that are missing, or of the wrong kind, or already there.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)


def exits_on_bad_input(main):
    """Wrap a command's `main(argv) -> exit code`."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (BadInput, *PATH_ERRORS) as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapped


def one_line(error: BaseException) -> str:
    """An error's message on one line (some libraries' messages span several)."""
    return " ".join(str(error).split())
