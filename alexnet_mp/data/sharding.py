"""Which epoch positions each process loads: data-parallel shards and model-parallel halves.

Training: the epoch's global step ``s`` covers positions ``[s·D·B, (s+1)·D·B)`` of the
epoch order (D data-parallel replicas, B per replica); replica ``r`` takes the ``r``-th
block of B. So the global batch sequence does not depend on how it is split, each image
is used at most once per epoch, and the last ``N mod D·B`` positions (different images
every epoch) are dropped: no replica ever waits for a partial batch. A column that decodes
only its part of the batch (``parts`` > 1) takes the ``part``-th slice of its block.

Evaluation: replica ``r`` takes the contiguous positions ``[r·N // D, (r+1)·N // D)``
(the rule DALI's reader uses for ``shard_id``/``num_shards``): every image exactly once.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def steps_per_epoch(n: int, batch_size: int, dp_size: int) -> int:
    """Full global batches in an epoch of ``n`` images."""
    return n // (batch_size * dp_size)


def check_rank(batch_size: int, dp_rank: int, dp_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size}: use a whole number >= 1.")
    if dp_size < 1 or not 0 <= dp_rank < dp_size:
        raise ConfigError(f"dp_rank = {dp_rank}, dp_size = {dp_size}: need 0 <= dp_rank < dp_size.")


def train_positions(
    n: int, *, batch_size: int, dp_rank: int, dp_size: int, start_step: int = 0, part: int = 0, parts: int = 1
) -> np.ndarray:
    """Epoch positions this process loads, in order, from ``start_step`` to the epoch's end."""
    check_rank(batch_size, dp_rank, dp_size)
    steps = steps_per_epoch(n, batch_size, dp_size)
    if not 0 <= start_step <= steps:
        raise ConfigError(f"start_step = {start_step}: an epoch here has {steps} steps (0..{steps}).")
    if batch_size % parts:
        raise ConfigError(f"batch_size = {batch_size} does not split into {parts} equal column parts.")
    sub = batch_size // parts
    step = np.arange(start_step, steps)[:, None]
    offset = dp_rank * batch_size + part * sub + np.arange(sub)[None, :]
    return (step * dp_size * batch_size + offset).reshape(-1)


def eval_positions(n: int, *, dp_rank: int, dp_size: int, limit: int = 0) -> np.ndarray:
    """This replica's contiguous share of the ``n`` evaluation images, or with ``limit`` of an
    evenly spaced subset of ``limit`` of them: the files are sorted by class, so every class keeps
    its share, and the subset is the same at every evaluation."""
    check_rank(1, dp_rank, dp_size)
    chosen = np.arange(n) if not limit or limit >= n else np.arange(limit) * n // limit
    m = len(chosen)
    return chosen[dp_rank * m // dp_size:(dp_rank + 1) * m // dp_size]
