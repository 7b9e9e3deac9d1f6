"""Plot runs like the paper's Figures 4-5: reward, response length, KL and accuracy per GRPO
step, each run's raw curve faint and its moving average bold, one colour per run.

    python -m jax_tinyr1.plot RUN_DIR [RUN_DIR ...] [--out DIR] [--window N]

One run: the plots go into its directory; several: into --out (default: the first run's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jax_tinyr1.cli import ConfigError, exits_on_bad_input
from jax_tinyr1.train.plot import plot_runs


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="where several runs' plots go")
    parser.add_argument("--window", type=int, default=None, help="moving-average steps (default: a tenth)")
    args = parser.parse_args(argv)
    if args.window is not None and args.window < 1:
        raise ConfigError("--window must be >= 1")
    paths = plot_runs(args.run_dirs, args.out, args.window)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
