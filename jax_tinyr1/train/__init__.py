"""Training entry points: `python -m jax_tinyr1.train.sft` and `python -m jax_tinyr1.train.grpo`."""
