"""A training run's progress, as `session.train_epochs` keeps it and a run's epoch reports it: where
training resumes, the resume state saved at each resume point (every epoch's end; zero-shot, every
scoring within an epoch too), the training curve (mvfa/engine/curve.py) and each epoch's line."""
from __future__ import annotations

import argparse
import random
import warnings
from pathlib import Path
from typing import Optional

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa.common.errors import Notice
from mvfa.common.outputs import curve_path, resume_path, tensorboard_path
from mvfa.engine.curve import TrainingCurve
from mvfa.engine.evaluation import Evaluation
from mvfa.engine.resume import ResumePoint, how_to_resume, load_resume_state, save_resume_state
from mvfa.engine.selection import ModelSelection
from mvfa.engine.training import AdapterOptimizers, EpochLosses


def report_epoch(epoch: int, losses: EpochLosses) -> float:
    """Print an epoch's mean loss, warning about the steps skipped for a non-finite loss; the mean."""
    mean, skipped = losses.summary()
    if skipped:
        warnings.warn(f'epoch {epoch}: skipped {skipped} steps whose loss was not finite', Notice)
    print(f'epoch {epoch}: loss {mean:.4f}')
    return mean


class Progress:
    """Where a training run is and what it has recorded. A run's epoch calls `scored` for each scoring
    during training, `reached` at each point it can resume from within the epoch (zero-shot), and
    `finished` with its losses; `resumed_within(epoch)` says where a resumed epoch starts."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path, model: MultiLevelAdaptedCLIP,
                 optimizers: AdapterOptimizers, selection: ModelSelection, shuffler: Optional[random.Random],
                 steps_per_epoch: int, started: float) -> None:
        self.args, self.model, self.optimizers, self.selection, self.shuffler = (
            args, model, optimizers, selection, shuffler)
        self.resume_file = resume_path(checkpoint)
        self.curve = TrainingCurve(curve_path(checkpoint), tensorboard_path(checkpoint), steps_per_epoch, started)
        self.start = ResumePoint(0)
        self.saved: Optional[ResumePoint] = None  # the point this run's resume file holds; None: none yet

    def resume(self) -> ResumePoint:
        """Restore the resume file's state (with --resume); the point training starts from."""
        loaded = load_resume_state(self.resume_file, self.model, self.optimizers, self.selection, self.args,
                                   self.shuffler)
        if loaded is not None:
            self.start, curve = loaded
            self.saved = self.start
            self.curve.restore(curve)
        return self.start

    def resumed_within(self, epoch: int) -> Optional[ResumePoint]:
        """The point within `epoch` this run resumed from, or None: the epoch starts at its first batch."""
        return self.start if self.start.within_epoch and self.start.epoch == epoch else None

    def reached(self, point: ResumePoint) -> None:
        """Save the resume state of `point`: training may continue from it."""
        save_resume_state(self.resume_file, self.model, self.optimizers, point, self.selection, self.args,
                          self.shuffler, self.curve.state())
        self.saved = point

    def scored(self, epoch: int, step: int, evaluation: Evaluation) -> None:
        self.curve.evaluation(epoch, step, evaluation)

    def finished(self, epoch: int, losses: EpochLosses) -> None:
        self.curve.loss(epoch, report_epoch(epoch, losses))

    def how_to_resume(self) -> Optional[str]:
        return how_to_resume(self.resume_file, self.saved)
