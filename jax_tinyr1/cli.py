"""What every command does with bad input (a missing or malformed file, a bad value): one line
on stderr naming it and exit code 2, never a traceback. Bad input raises ValueError (DataError,
ConfigError, CheckpointError, VideoDecodeError are ones) or OSError (a missing path)."""

from __future__ import annotations

import functools
import sys

EXIT_BAD_INPUT = 2


def exits_on_bad_input(main):
    """Wrap a command's `main(argv) -> exit code`."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ValueError, OSError) as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapped


def one_line(error: BaseException) -> str:
    """An error's message on one line (some libraries' messages span several)."""
    return " ".join(str(error).split())
