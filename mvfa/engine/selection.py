"""Model selection: which adapter state a training run keeps and reports.

The paper keeps the epoch that scores best on the test set itself (`test`, the default, to
reproduce its numbers). The clean alternatives: the best on the `valid/` images that are not
support images (`valid`), or simply the final state (`last`).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa.engine.checkpoint import ADAPTER_KEYS
from mvfa.common.config import SELECTION_MODES
from mvfa.engine.evaluation import Evaluation

# Where the scores a selection mode compares come from (`last` compares none).
SCORED_ON = {'test': 'test', 'valid': 'valid', 'last': None}

AdapterState = Dict[str, Dict[str, torch.Tensor]]
Saver = Callable[[MultiLevelAdaptedCLIP, Dict], None]


def adapter_state(model: MultiLevelAdaptedCLIP) -> AdapterState:
    """A copy of the adapters' weights, on the CPU."""
    return {key: {name: tensor.detach().to('cpu', copy=True)
                  for name, tensor in getattr(model, key).state_dict().items()}
            for key in ADAPTER_KEYS}


class ModelSelection:
    """Keeps the adapter state the selection mode picks, saving it (through `save`) whenever it changes.

    `keep_ties`: among equal scores keep the later state ('>=', the authors' zero-shot rule)
    rather than the earlier ('>', their few-shot rule).
    """

    def __init__(self, mode: str, keep_ties: bool, save: Optional[Saver] = None) -> None:
        if mode not in SELECTION_MODES:
            raise ValueError(f'unknown selection mode {mode!r}: choose one of {", ".join(SELECTION_MODES)}')
        self.mode = mode
        self.keep_ties = keep_ties
        self.save = save
        self.evaluation: Optional[Evaluation] = None
        self.step: Optional[str] = None
        self.state: Optional[AdapterState] = None

    @property
    def scores_during_training(self) -> bool:
        return self.mode != 'last'

    def consider(self, model: MultiLevelAdaptedCLIP, evaluation: Evaluation, step: str) -> bool:
        """Keep the model's current state if it beats the kept one (mode `last`: always)."""
        if self.mode != 'last' and self.evaluation is not None:
            margin = evaluation.selection_score - self.evaluation.selection_score
            if margin < 0 or (margin == 0 and not self.keep_ties):
                return False
        self.evaluation, self.step = evaluation, step
        self.state = adapter_state(model) if self.mode == 'valid' else None  # only `valid` comes back to it
        if self.save is not None:
            self.save(model, self.metadata())
        return True

    def metadata(self) -> Dict:
        """What a checkpoint's sidecar records about its selection."""
        return {'selection': self.mode, 'step': self.step, 'scored_on': SCORED_ON[self.mode] or 'test',
                'image_auroc': self.evaluation.image_auroc, 'pixel_auroc': self.evaluation.pixel_auroc}

    def tested(self, model: MultiLevelAdaptedCLIP, test: Callable[[], Evaluation],
               last_step: str) -> Tuple[Evaluation, str]:
        """The test-set evaluation of the selected state, and the step it was taken at.

        `test` scores the model as it is; it is called for `valid` (after restoring the picked
        state) and `last`, whereas `test` selection already holds its test evaluation.
        """
        if self.mode == 'test':
            return self.evaluation, self.step
        if self.mode == 'valid':
            for key in ADAPTER_KEYS:
                getattr(model, key).load_state_dict(self.state[key])
        evaluation = test()
        if self.mode == 'last':
            self.consider(model, evaluation, last_step)
        return evaluation, self.step


def selection_loader(mode: str, test_loader: DataLoader,
                     validation_loader: Callable[[], DataLoader]) -> Optional[DataLoader]:
    """What model selection scores during training: the test set, the `valid/` split (built only
    then), or nothing (`last`)."""
    return {'test': lambda: test_loader, 'valid': validation_loader, 'last': lambda: None}[mode]()
