"""The paper's learning-rate schedule: divide by 10 when the validation error stops improving
(:class:`PlateauSchedule`), or at fixed epochs (:class:`EpochSchedule`) — the paper's drops were
made by hand, and a run of a few epochs cannot wait for a plateau.

A schedule's state is a few numbers, kept as JSON in each checkpoint's ``meta.json`` (nothing pickled).
The lr in effect is always ``base_lr * factor ** reductions``, so a run resumed with another
``[optimizer] lr`` keeps its place in the schedule (docs/training.md, "Failure and recovery").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checkpoint_meta import MAX_STEP, check_schedule, whole_in


@dataclass(slots=True)
class PlateauSchedule:
    """``factor`` times the lr after ``patience`` evaluations without an improvement of at least
    ``threshold`` (absolute) in the error, at most ``max_reductions`` times."""

    base_lr: float
    factor: float
    patience: int
    threshold: float
    max_reductions: int
    best: float = math.inf
    bad_evals: int = 0
    reductions: int = 0

    @property
    def lr(self) -> float:
        return self.base_lr * self.factor**self.reductions

    def after_epoch(self, epoch: int, error: float | None) -> bool:
        """The end of ``epoch`` (1-based), with its validation error if it was evaluated; True when
        the lr was just reduced."""
        return False if error is None else self.step(error)

    def step(self, error: float) -> bool:
        """Record one evaluation's error; True when the lr was just reduced."""
        if error < self.best - self.threshold:
            self.best, self.bad_evals = error, 0
            return False
        self.bad_evals += 1
        if self.bad_evals > self.patience and self.reductions < self.max_reductions:
            self.reductions += 1
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict:
        """JSON-ready: ``best`` is None until the first evaluation."""
        return {"best": None if math.isinf(self.best) else self.best, "bad_evals": self.bad_evals,
                "reductions": self.reductions}

    def load_state_dict(self, state: dict) -> None:
        """``ValueError`` naming a value outside the rule (:func:`~.checkpoint_meta.check_schedule`, and
        no more reductions than ``max_reductions``)."""
        check_schedule(state)
        self.bad_evals = whole_in(state, "bad_evals", 0, MAX_STEP)
        self.reductions = whole_in(state, "reductions", 0, self.max_reductions)
        self.best = math.inf if state.get("best") is None else float(state["best"])


@dataclass(slots=True)
class EpochSchedule:
    """``factor`` times the lr after each epoch in ``at_epochs`` (1-based), whatever the error."""

    base_lr: float
    factor: float
    at_epochs: tuple[int, ...]
    reductions: int = 0

    @property
    def lr(self) -> float:
        return self.base_lr * self.factor**self.reductions

    def after_epoch(self, epoch: int, error: float | None) -> bool:
        due = sum(1 for e in self.at_epochs if e <= epoch)
        if due > self.reductions:
            self.reductions = due
            return True
        return False

    def state_dict(self) -> dict:
        return {"reductions": self.reductions}

    def load_state_dict(self, state: dict) -> None:
        self.reductions = whole_in(state, "reductions", 0, len(self.at_epochs))
