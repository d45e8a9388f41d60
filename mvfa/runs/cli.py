"""The four scripts' parser (the flags they share, declared in mvfa/common/flags.py), the model's flags, and how a
script ends (`run`). Torch-free: `--help` and a bad flag answer before torch is imported."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional

from mvfa.common.config import PAPER
from mvfa.common.errors import Notice, UserError
from mvfa.common.flags import MODEL_FLAGS, FlagParser
from mvfa.common.outputs import (FILE, FOLDER, Output, checkpoint_path, curve_path, resume_path, sidecar_path,
                                 tensorboard_path)
from mvfa.common.threads import yield_idle_threads

# Every script imports this module before torch, and OpenMP reads its wait policy as torch loads it.
yield_idle_threads()

# The test scripts' default --save_path: where the README puts the authors' released checkpoints.
FEW_SHOT_CHECKPOINTS, ZERO_SHOT_CHECKPOINTS = './ckpt/few-shot/', './ckpt/zero-shot/'


def add_model_arguments(p: FlagParser) -> None:
    """The flags that build the model and say where and how it runs (also predict.py's and reproduce.py's)."""
    for name in (*MODEL_FLAGS, 'seed', 'device', 'precision', 'threads'):
        p.add(name)


def add_scan_arguments(p: FlagParser) -> None:
    """How DICOM and NIfTI scans become images (predict.py and dataset/prepare.py; dataset/volumes.py)."""
    for name in ('window', 'axis', 'frame'):
        p.add(name)


def parser(description: str, obj: str, save_path: str | None, few_shot: bool, training: bool,
           learning_rate: float = PAPER.few_shot_learning_rate, example: Optional[str] = None) -> FlagParser:
    """The authors' flags (same names and defaults) plus ours; `few_shot`/`training` add theirs.
    `example`: a command line the help shows."""
    p = FlagParser(description=description, example=example)
    p.add('obj', default=obj)
    p.add('data_path')
    p.add('batch_size', **({'default': 1, 'help': 'images per training step'} if training else {}))
    p.add('save_path', default=save_path)
    add_model_arguments(p)
    p.add('results')
    for name in ('bootstrap', 'bootstrap_seed'):
        p.add(name)
    if few_shot:
        for name in ('shot', 'iterate', 'fewshot_seed_dir'):
            p.add(name)
    if training:
        p.add('epoch')
        p.add('learning_rate', default=learning_rate)
        p.add_argument('--save_model', type=int, default=1, help='1: save the selected adapters, 0: do not')
        p.add('eval_batch_size')
        p.add_argument('--cache_streams', choices=('auto', 'on', 'off'), nargs='?', const='on', default='auto',
                       help='keep the streams of the scored images through the frozen blocks up to the first '
                            'adapters in memory: about 25 %% faster evaluations for 1.2 MB per image (ViT-L, '
                            '240 px; BrainMRI\'s 3715 test images: 4.4 GB); auto: on a GPU where they fit in '
                            'half its free memory, off on a CPU')
        p.add('selection')
        p.add_argument('--resume', action='store_true',
                       help='continue where <save_path>/<Obj>.resume.pt says (same flags): after the last finished '
                            'epoch, or zero-shot after the last scoring within one')
    else:
        p.add_argument('--save_vis', type=Path, default=None, help='write a heatmap PNG per test image to this folder')
        p.add('normalisation')
    if few_shot and not training:
        # The authors' test_few.py took its training flags too; accepted so their commands still run.
        for flag in ('--epoch', '--learning_rate', '--save_model'):
            p.add_argument(flag, type=float, help=argparse.SUPPRESS)
    return p


# The four scripts: name -> (parser's keyword arguments but the description).
SCRIPTS = {
    'train_zero': dict(obj='Retina_RESC', save_path=ZERO_SHOT_CHECKPOINTS, few_shot=False, training=True,
                       learning_rate=PAPER.zero_shot_learning_rate, example='python train_zero.py --obj Brain'),
    'train_few': dict(obj='Liver', save_path=FEW_SHOT_CHECKPOINTS, few_shot=True, training=True,
                      learning_rate=PAPER.few_shot_learning_rate,
                      example='python train_few.py --obj Brain --shot 4 --iterate 0'),
    'test_zero': dict(obj='Retina_RESC', save_path=ZERO_SHOT_CHECKPOINTS, few_shot=False, training=False,
                      example='python test_zero.py --obj Brain'),
    'test_few': dict(obj='Liver', save_path=None, few_shot=True, training=False,
                     example='python test_few.py --obj Brain --shot 4 --iterate 0'),
}


def script_parser(script: str, description: str = '') -> FlagParser:
    """The parser of train_zero.py, train_few.py, test_zero.py or test_few.py (reproduce.py reads a run's flags
    with it, to tell whether a results file was made with them)."""
    p = parser(description, **SCRIPTS[script])
    if script == 'test_few':
        p.add_argument('--normal_only', action='store_true',
                       help='memory bank of the k normal support images on the zero-shot adapters '
                            f'(--save_path defaults to {ZERO_SHOT_CHECKPOINTS}, else {FEW_SHOT_CHECKPOINTS}); '
                            'no abnormal image is needed')
    return p


def script_outputs(args: argparse.Namespace) -> List[Output]:
    """The places train_*.py and test_*.py write, for `check_outputs` before they read any data: the
    checkpoint folder with the checkpoint, its sidecar, the resume state, the curve and its TensorBoard
    folder (training), the results file and the heatmap folder."""
    places = [] if args.results is None else [Output('--results', args.results, FILE)]
    if getattr(args, 'save_vis', None) is not None:
        places.append(Output('--save_vis', args.save_vis))
    if hasattr(args, 'resume'):  # a training run
        checkpoint = checkpoint_path(args)
        places += [Output('--save_path', path, kind) for path, kind in (
            (Path(args.save_path), FOLDER), (resume_path(checkpoint), FILE), (curve_path(checkpoint), FILE),
            (tensorboard_path(checkpoint), FOLDER))]
        if args.save_model == 1:
            places += [Output('--save_path', checkpoint, FILE), Output('--save_path', sidecar_path(checkpoint), FILE)]
    return places


def show_notices(show: Callable) -> Callable:
    """`warnings.showwarning` that prints a Notice as one `warning: ...` line and hands other warnings to `show`."""
    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, Notice):
            print(f'warning: {message}', file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def run(main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run a script's main and return the exit status: 0, or the int main returns (bench.py and
    gpu_check.py: 1 when scores disagree); a problem with the user's input becomes one line and
    status 2, Ctrl-C one line and status 130 (the shell's for SIGINT). Notices print as `warning: ...`."""
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning afterwards
            warnings.showwarning = show_notices(warnings.showwarning)
            status = main(argv)
    except UserError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        # On a line of its own: the interrupted progress bar (and the terminal's ^C) end without one.
        how_to_resume = getattr(error, 'how_to_resume', None)
        if how_to_resume:
            print(f'\n{how_to_resume}', end='', file=sys.stderr)
        print(f'\ninterrupted: {error}' if str(error) else '\ninterrupted', file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0
