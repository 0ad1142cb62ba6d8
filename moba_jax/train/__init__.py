"""Training: optimizer, sharded state, the pure train step, checkpoints, the loop."""
