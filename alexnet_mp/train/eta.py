"""How long the rest of a run will take: the training steps left, and the validation passes left.

Validation is counted in *forward passes of one image* (a centre crop is one, the ten patches
ten), so one measured rate covers both. Before the first validation the rate comes from the
forward halves of the training steps already run; after it, from the validations themselves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

RECENT_STEPS = 50  # the step time is the mean of this many latest steps


@dataclass(frozen=True)
class Remaining:
    steps: int
    validations: int
    forwards: int  # one image through the network once; the ten patches count ten


def validates_after_epoch(cfg, epoch: int) -> bool:
    """Whether the trainer validates when (1-based) ``epoch`` ends: every ``freq_epochs`` and at the last."""
    return epoch % cfg.validation.freq_epochs == 0 or epoch == cfg.training.epochs


def final_validation_needed(cfg, *, validated_at_stop: bool, last_epoch: bool) -> bool:
    """Whether a final validation runs after the loop stops: unless the run validated at the step
    it stopped at and that validation was final already (the last epoch's, or any one when the ten
    patches are not kept for the end)."""
    return not (validated_at_stop and (last_epoch or cfg.validation.ten_crop != "end"))


def remaining(cfg, *, epoch: int, step_in_epoch: int, global_step: int, steps_per_epoch: int, num_val: int) -> Remaining:
    """The training steps, validations and validation forwards still to come, as the trainer will
    run them: one every ``freq_epochs`` epochs and at the last, a final one when ``max_steps``
    stops the run between validations, and the projector's images at the very end."""
    t, v = cfg.training, cfg.validation
    steps = (t.epochs - epoch) * steps_per_epoch - step_in_epoch
    if t.max_steps:
        steps = min(steps, max(0, t.max_steps - global_step))
    done = epoch * steps_per_epoch + step_in_epoch
    end = done + steps
    ten = min(v.ten_crop_images or num_val, num_val)
    passes = [e == t.epochs for e in range(epoch + 1, t.epochs + 1)  # True: the final one
              if e * steps_per_epoch <= end and validates_after_epoch(cfg, e)]
    if end < t.epochs * steps_per_epoch:  # max_steps stops the run before the last epoch ends
        at_validation = end % steps_per_epoch == 0 and validates_after_epoch(cfg, end // steps_per_epoch)
        if final_validation_needed(cfg, validated_at_stop=at_validation, last_epoch=False):
            passes.append(True)
    forwards = 0
    for last in passes:
        forwards += num_val
        if v.ten_crop == "every" or (v.ten_crop == "end" and last):
            forwards += 10 * ten
    forwards += min(cfg.metrics.projector_images, num_val) if cfg.metrics.enable_tensorboard else 0
    return Remaining(steps=steps, validations=len(passes), forwards=forwards)


class Estimate:
    """Rates measured so far on this attempt: seconds per training step (data wait included) and
    seconds per validation forward of one image (the whole validation set across replicas)."""

    def __init__(self) -> None:
        self.steps = 0
        self.first_step_s: float | None = None  # warm-up: used only while it is the only one
        self.recent_step_s: deque[float] = deque(maxlen=RECENT_STEPS)
        self.forward_s_per_image: list[float] = []  # from the training steps' forward halves (the first few)
        self.validation_s = 0.0
        self.validation_forwards = 0

    def training_step(self, seconds: float, forward_seconds: float | None, images: int) -> None:
        """``forward_seconds``: None once the forward is no longer timed."""
        self.steps += 1
        if self.steps == 1:
            self.first_step_s = seconds
        else:
            self.recent_step_s.append(seconds)
        if forward_seconds is not None:
            self.forward_s_per_image.append(forward_seconds / max(1, images))

    def validation(self, seconds: float, forwards: int) -> None:
        self.validation_s += seconds
        self.validation_forwards += forwards

    def seconds_per_step(self) -> float | None:
        if self.recent_step_s:  # the first step pays for warm-up
            return sum(self.recent_step_s) / len(self.recent_step_s)
        return self.first_step_s

    def seconds_per_forward(self) -> float | None:
        if self.validation_forwards:
            return self.validation_s / self.validation_forwards
        warm = self.forward_s_per_image[1:] or self.forward_s_per_image
        return sum(warm) / len(warm) if warm else None

    def seconds(self, left: Remaining) -> tuple[float, float] | None:
        """(training, validation) seconds for what is ``left``; None before the first step."""
        step, forward = self.seconds_per_step(), self.seconds_per_forward()
        if step is None or forward is None:
            return None
        return left.steps * step, left.forwards * forward
