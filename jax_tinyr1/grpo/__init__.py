"""The GRPO stage (paper section 3): group advantages, the objective and its ablation
variants, the stage's config and update, and the trainer's step (rollout -> rewards ->
advantages -> updates)."""
