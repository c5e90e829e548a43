"""Training: the loop, checkpoints, evaluation and what a run shows."""
