"""Resume state of training (few- and zero-shot): all that continuing from a `ResumePoint` needs.

Saved atomically as `<save_path>/<Obj>.resume.pt` after every epoch and, zero-shot, after every
scoring within one: the adapters, both optimizers, where to continue, the model selection so far,
the training curve's rows and the random generators' states (the global ones and the script's own
shuffler, if it has one), so a resumed run continues as the uninterrupted one would have. Within an
epoch the state also keeps the shuffler as the epoch began (its batch order is drawn again from it)
and the losses of the batches done. The kept evaluation is stored without its per-pixel arrays (a
BrainMRI test set's would take a gigabyte): a resumed run reports its AUROCs and image scores, not
the pixel AP/AUPRO of a scoring before the interruption.

The file's keys: the adapters', `optimizers`, `epoch` (the last finished epoch, -1: none), `within`
(None, or the point within epoch + 1: `step`, `shuffler_at_start`, `losses`), `selection`, `curve`
(None in files written before curves), `rng` and `flags`. Files of epochs alone (no `within`) load.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa.engine.checkpoint import ADAPTER_KEYS, CheckpointError, load_adapters, torch_bytes
from mvfa.engine.evaluation import Evaluation
from mvfa.common.flags import TRAINING_FLAGS, flag_text
from mvfa.common.outputs import atomic_write
from mvfa.common.flags import flag_values
from mvfa.engine.selection import ModelSelection
from mvfa.engine.training import AdapterOptimizers

# Per-pixel arrays of an evaluation, left out of the resume state for their size.
PIXEL_FIELDS = ('masks', 'pixel_scores', 'maps')


@dataclass(frozen=True)
class ResumePoint:
    """Where training continues: `epoch` from its start, or (`step` given) after the scoring at batch `step`
    of it, whose training step comes next."""
    epoch: int
    step: Optional[int] = None
    shuffler_at_start: Optional[tuple] = None  # the batch order's generator as `epoch` began
    losses: Optional[Tensor] = None  # the losses of the `step` batches done, in their order

    @property
    def within_epoch(self) -> bool:
        return self.step is not None

    def __str__(self) -> str:
        """Where it continues, as the messages say it: 'after epoch 2', or 'at epoch 3 batch 8' (batches counted
        from 0 as the selection's steps are: that batch is trained next, its scoring done)."""
        if self.within_epoch:
            return f'at epoch {self.epoch} batch {self.step}'
        return f'after epoch {self.epoch - 1}'


def _training_flags(args: argparse.Namespace) -> Dict:
    """The flags that change what training does (their `identity` role): resuming under other values would
    mix two runs."""
    return {key: value for key, value in flag_values(args).items() if key in TRAINING_FLAGS}


def _evaluation_to_tensors(evaluation: Optional[Evaluation]) -> Optional[Dict]:
    # Tensors, not numpy arrays, so the file loads with torch.load(weights_only=True).
    if evaluation is None:
        return None
    return {field.name: torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
            for field in dataclasses.fields(evaluation) if field.name not in PIXEL_FIELDS
            for value in [getattr(evaluation, field.name)]}


def _evaluation_from_tensors(fields: Optional[Dict]) -> Optional[Evaluation]:
    if fields is None:
        return None
    return Evaluation(**{name: value.numpy() if isinstance(value, torch.Tensor) else value
                         for name, value in fields.items()})


def _rng_states(shuffler: Optional[random.Random]) -> Dict:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {'python': random.getstate(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            'shuffler': shuffler.getstate() if shuffler is not None else None}


def _restore_rng_states(states: Dict, shuffler: Optional[random.Random]) -> None:
    random.setstate(states['python'])
    if shuffler is not None:
        shuffler.setstate(states['shuffler'])
    torch.set_rng_state(states['torch'])
    if states['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])
    name, keys, position, has_gauss, cached_gaussian = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))


def save_resume_state(path: Path, model: MultiLevelAdaptedCLIP, optimizers: AdapterOptimizers, point: ResumePoint,
                      selection: ModelSelection, args: argparse.Namespace, shuffler: Optional[random.Random] = None,
                      curve: Optional[Dict] = None) -> None:
    """Record the state from which training continues at `point`; never leaves a half-written file.

    `shuffler`: a generator of the script's own besides the global ones (train_zero's batch order).
    `curve`: the training curve's state (`TrainingCurve.state`).
    """
    state = {key: getattr(model, key).state_dict() for key in ADAPTER_KEYS}
    within = None if not point.within_epoch else {
        'step': point.step, 'shuffler_at_start': point.shuffler_at_start, 'losses': point.losses}
    state.update(epoch=point.epoch - 1, within=within, optimizers=optimizers.state_dicts(),
                 selection={'evaluation': _evaluation_to_tensors(selection.evaluation), 'step': selection.step,
                            'state': selection.state},
                 curve=curve, rng=_rng_states(shuffler), flags=_training_flags(args))
    atomic_write(path, torch_bytes(state))


def load_resume_state(path: Path, model: MultiLevelAdaptedCLIP, optimizers: AdapterOptimizers,
                      selection: ModelSelection, args: argparse.Namespace,
                      shuffler: Optional[random.Random] = None) -> Optional[Tuple[ResumePoint, Optional[Dict]]]:
    """Restore the state of `path` into the model, optimizers, selection and generators; its resume point
    and curve state (None: a file written before curves), or None without a resume state (training
    starts at epoch 0, so the same command serves a first run)."""
    if not path.is_file():
        print(f'no resume state at {path}: starting at epoch 0')
        return None
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # damaged files raise many types
        raise CheckpointError(f'cannot read resume state {path} ({type(error).__name__}): it is damaged; '
                              f'delete it to start afresh') from None
    flags = _training_flags(args)
    # Both ways: a few-shot state (--shot ..., no shuffler) met by a zero-shot run with its --save_path
    # may differ only in flags the run lacks.
    for key in sorted(flags.keys() | state['flags'].keys()):
        value = flags.get(key)
        if state['flags'].get(key) != value:
            raise CheckpointError(f'{path} was made with --{key} {flag_text(state["flags"].get(key))}, this run has '
                                  f'{flag_text(value)}: rerun with the same flags, or delete it to start afresh')
    within = state.get('within')
    if within is not None and shuffler is None:
        raise CheckpointError(f'{path} stops within an epoch, which only zero-shot training resumes: '
                              f'delete it to start afresh')
    load_adapters(model, path, {key: state[key] for key in ADAPTER_KEYS})
    optimizers.load_state_dicts(state['optimizers'])
    selection.evaluation = _evaluation_from_tensors(state['selection']['evaluation'])
    selection.step, selection.state = state['selection']['step'], state['selection']['state']
    _restore_rng_states(state['rng'], shuffler)
    point = ResumePoint(state['epoch'] + 1) if within is None else ResumePoint(
        state['epoch'] + 1, within['step'], within['shuffler_at_start'], within['losses'])
    print(f'resuming from {path} {point}')
    return point, state.get('curve')


def how_to_resume(path: Path, saved: Optional[ResumePoint]) -> Optional[str]:
    """The Ctrl-C message's line on going on: once a resume point is saved, how to resume from it."""
    if saved is None:
        return None
    return f'the same command with --resume continues {saved} (from {path})'
