"""A checkpoint's JSON sidecar (`<Obj>.json` beside `<Obj>.pth`): how its adapters were made, and the
flags a test run takes from it. Torch-free: a missing checkpoint or a contradicting flag is reported
before torch is imported."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Set, Tuple

from dataset.objects import seed_list_path
from mvfa.common.errors import UserError
from mvfa.common.flags import DRAW_FLAGS, MODEL_FLAGS, flag_text
from mvfa.common.outputs import sidecar_path

# Every flag a test run may take from a sidecar: `seed` too, which names a random draw.
SIDECAR_FLAGS = MODEL_FLAGS + DRAW_FLAGS + ('seed',)


class CheckpointError(UserError):
    """A checkpoint is missing or does not fit the model; the message says how to fix it."""


def read_sidecar(path: Path) -> Optional[Dict]:
    """How the checkpoint at `path` was made; None without a sidecar (the authors' checkpoints)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text(encoding='utf-8'))
    except ValueError as error:
        raise CheckpointError(f'cannot read {sidecar} ({error}): fix or remove it') from None


def check_checkpoint_exists(path: Path) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f'no checkpoint at {path}: train one first (train_few.py / train_zero.py '
                              f'with the same --obj) or put the authors\' released .pth files there')


def adopted_flags(made: Dict, args: argparse.Namespace) -> Tuple[str, ...]:
    """The flags of `args` that must be the sidecar's: the model flags; for few-shot adapters, the
    draw of their support set as well (and the seed, where that draw was random)."""
    if made.get('setting') != 'few-shot' or not hasattr(args, 'shot'):
        return MODEL_FLAGS
    flags = made.get('flags', {})
    random_draw = flags.get('iterate', 0) < 0 or not seed_list_path(
        flags.get('fewshot_seed_dir', ''), flags.get('obj', ''), flags.get('shot', 0)).is_file()
    return MODEL_FLAGS + DRAW_FLAGS + (('seed',) if random_draw else ())


def adopt_sidecar_flags(args: argparse.Namespace, given: Set[str], checkpoint: Path) -> Optional[Dict]:
    """Make `args` match how the checkpoint was made, from its sidecar (returned; None without one):
    each of its `adopted_flags` not given takes the sidecar's value; one given must agree with it."""
    made = read_sidecar(checkpoint)
    if made is None:
        return None
    trained_with = made.get('flags', {})
    for name in adopted_flags(made, args):
        if name not in trained_with:
            continue
        # Paths are stored as text: compared and taken as paths ('dir/' is 'dir').
        recorded = Path(trained_with[name]) if isinstance(getattr(args, name), Path) else trained_with[name]
        if name not in given:
            setattr(args, name, recorded)
        elif getattr(args, name) != recorded:
            raise CheckpointError(f'{checkpoint} was trained with --{name} {flag_text(recorded)}, this '
                                  f'run has --{name} {flag_text(getattr(args, name))}: leave the flag out to use '
                                  f"the checkpoint's")
    return made


def refuse_few_shot_adapters(made: Optional[Dict], checkpoint: Path, run: str, instead: str) -> None:
    """Few-shot adapters were trained on abnormal images of their object: a zero-shot or normal-only
    test of them would report a leaked number as one that saw none."""
    if made is not None and made.get('setting') == 'few-shot':
        raise CheckpointError(f'{checkpoint} holds few-shot adapters, trained on abnormal images of their object: '
                              f'{run} needs zero-shot ones ({instead})')
