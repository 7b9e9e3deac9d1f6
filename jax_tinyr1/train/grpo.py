"""GRPO training (the paper's reinforcement-learning stage).

    python -m jax_tinyr1.train.grpo --config configs/paper_8xa100.yaml [section.key=value ...]

Resumes from the latest complete checkpoint in `run.output_dir/checkpoints`.
"""

import sys

from jax_tinyr1.train.run import main

if __name__ == "__main__":
    sys.exit(main(None, stage="grpo", description=__doc__))
