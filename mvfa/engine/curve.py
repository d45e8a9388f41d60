"""A training run's curve: `<save_path>/<Obj>.curve.csv`, rewritten whole after every row, and, where the
tensorboard package is installed, the same numbers as TensorBoard scalars under `<save_path>/tensorboard/<Obj>/`.

Rows (CURVE_COLUMNS): kind `loss`, one per epoch, its mean loss (step: the epoch's batch count, its end);
kind `evaluation`, one per scoring during training, its AUROCs (step: the batch it was scored before,
zero-shot; the epoch's end, few-shot). elapsed_s: seconds since the run's Session began, plus those of
the runs before a --resume. TensorBoard's tags: loss/train, auroc/image, auroc/pixel, against the global
step epoch * steps per epoch + step. The rows are part of the resume state: a resumed run rewrites the
CSV and the TensorBoard scalars from them (its event file purges the earlier ones), so both hold each
step once.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Dict, List, Optional

from mvfa.common.outputs import atomic_write, csv_text
from mvfa.engine.evaluation import Evaluation

CURVE_COLUMNS = ('epoch', 'step', 'kind', 'loss', 'image_auroc', 'pixel_auroc', 'elapsed_s')
# A row's value and the TensorBoard tag it is written under.
SCALARS = {'loss': 'loss/train', 'image_auroc': 'auroc/image', 'pixel_auroc': 'auroc/pixel'}


def tensorboard_available() -> bool:
    return importlib.util.find_spec('tensorboard') is not None


class TrainingCurve:
    """The rows of a training run, written as they come; `open` starts the TensorBoard writer, `close` ends it."""

    def __init__(self, path: Path, tensorboard: Path, steps_per_epoch: int, started: float) -> None:
        self.path, self.tensorboard, self.steps_per_epoch = path, tensorboard, steps_per_epoch
        self.started = started  # time.perf_counter() as the run began
        self.elapsed_before = 0.0  # seconds of the runs before a --resume
        self.rows: List[Dict] = []
        self.writer = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def state(self) -> Dict:
        """What the resume state keeps of the curve."""
        return {'rows': [dict(row) for row in self.rows], 'elapsed_s': self.elapsed()}

    def restore(self, state: Optional[Dict]) -> None:
        """Continue the curve of a resume state (None: one written before curves were kept, which starts anew)."""
        if state is not None:
            self.rows = [dict(row) for row in state['rows']]
            self.elapsed_before = state['elapsed_s']

    def open(self) -> None:
        """Write the CSV of the rows so far, and start TensorBoard's file with them (if tensorboard is installed)."""
        atomic_write(self.path, csv_text(self.rows, CURVE_COLUMNS))
        if not tensorboard_available():
            return
        from torch.utils.tensorboard import SummaryWriter
        # purge_step 0: TensorBoard drops the scalars of earlier event files here; this one holds every row.
        self.writer = SummaryWriter(str(self.tensorboard), purge_step=0)
        for row in self.rows:
            self._scalars(row)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def loss(self, epoch: int, mean_loss: float) -> None:
        self._add({'epoch': epoch, 'step': self.steps_per_epoch, 'kind': 'loss', 'loss': mean_loss})

    def evaluation(self, epoch: int, step: int, evaluation: Evaluation) -> None:
        self._add({'epoch': epoch, 'step': step, 'kind': 'evaluation', 'image_auroc': evaluation.image_auroc,
                   'pixel_auroc': evaluation.pixel_auroc})

    def _add(self, values: Dict) -> None:
        row = {column: values.get(column) for column in CURVE_COLUMNS}
        row['elapsed_s'] = round(self.elapsed(), 3)
        self.rows.append(row)
        atomic_write(self.path, csv_text(self.rows, CURVE_COLUMNS))
        if self.writer is not None:
            self._scalars(row)
            self.writer.flush()

    def _scalars(self, row: Dict) -> None:
        step = row['epoch'] * self.steps_per_epoch + row['step']
        for column, tag in SCALARS.items():
            if row[column] is not None:
                self.writer.add_scalar(tag, row[column], step)
