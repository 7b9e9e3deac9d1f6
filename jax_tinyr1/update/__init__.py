"""The update machinery every training stage shares (SFT and GRPO): which parameters train,
the optimizer, log-probs of given tokens, the jitted sharded update, the trainer's state and
the moves between processes and global arrays."""
