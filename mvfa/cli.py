"""The flags the scripts share, and how a script ends: one parser for the four scripts' common flags, one
for the model's, and `run`. Torch-free: `--help` and a bad flag answer before torch is imported."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional

from dataset.objects import DEFAULT_SEED_DIR, OBJECTS
from mvfa.config import ADAPTATIONS, PAPER, SELECTION_MODES
from mvfa.errors import UserError
from mvfa.flags import FlagParser
from mvfa.threads import yield_idle_threads

# Every script imports this module before torch, and OpenMP reads its wait policy as torch loads it.
yield_idle_threads()

DATA_PATH = './data/'  # the authors' default --data_path
# The test scripts' default --save_path: where the README puts the authors' released checkpoints.
FEW_SHOT_CHECKPOINTS, ZERO_SHOT_CHECKPOINTS = './ckpt/few-shot/', './ckpt/zero-shot/'
# The flags that shape the model: a checkpoint fits only the model it was trained with.
MODEL_FLAGS = ('model_name', 'pretrain', 'img_size', 'features_list', 'quick_gelu', 'adaptation')


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that build the model and say where and how it runs (also predict.py's and reproduce.py's)."""
    p.add_argument('--model_name', default='ViT-L-14-336',
                   help='open_clip model name, a config name in CLIP/model_configs (e.g. tiny-clip), or a JSON path')
    p.add_argument('--pretrain', default='openai',
                   help="'openai' (CLIP/ckpt/ViT-L-14-336px.pt, else open_clip's download), a weights file, or 'none'")
    p.add_argument('--img_size', type=int, default=PAPER.img_size, help='input resolution (the paper: 240)')
    p.add_argument('--features_list', type=int, nargs='+', default=list(PAPER.levels),
                   help='1-based transformer blocks that get adapters')
    p.add_argument('--seed', type=int, default=PAPER.seed,
                   help='seed of random, numpy and torch (reproduce.py: of the first random draw)')
    p.add_argument('--device', default=None, help='cuda, mps or cpu (default: cuda if available, else mps, else cpu)')
    p.add_argument('--precision', choices=('auto', 'fp32', 'fp16', 'bf16'), default='auto',
                   help='autocast dtype; auto: fp16 on CUDA (as the authors), fp32 elsewhere')
    p.add_argument('--threads', type=int, default=None,
                   help="torch's CPU threads (default: OMP_NUM_THREADS or MKL_NUM_THREADS if set, else the CPUs "
                        "this process may use: its affinity and cgroup quota)")
    p.add_argument('--quick_gelu', action='store_true',
                   help="QuickGELU, as OpenAI trained CLIP (the authors' numbers use exact GELU)")
    p.add_argument('--adaptation', choices=ADAPTATIONS, default='adapter',
                   help="'adapter': MVFA's residual adapters; 'projector': the paper's Table 4 ablation, "
                        "projectors of the frozen stream that feed nothing back")


def parser(description: str, obj: str, save_path: str | None, few_shot: bool, training: bool,
           learning_rate: float = PAPER.few_shot_learning_rate, example: Optional[str] = None) -> FlagParser:
    """The authors' flags (same names and defaults) plus ours; `few_shot`/`training` add theirs.
    `example`: a command line the help shows."""
    p = FlagParser(description=description, example=example)
    p.add_argument('--obj', default=obj, help=f"target object: {', '.join(OBJECTS)}, or a category of --data_path")
    p.add_argument('--data_path', default=DATA_PATH, help='folder holding <Obj>_AD folders, or MVTec AD or VisA')
    p.add_argument('--batch_size', type=int, default=1 if training else 16,
                   help='images per training step' if training
                   else 'images per inference batch (scores do not depend on it)')
    p.add_argument('--save_path', default=save_path, help='folder of the <Obj>.pth adapter checkpoints')
    add_model_arguments(p)
    p.add_argument('--results', type=Path, default=None, help='write the scores and AUROCs to this JSON file')
    if few_shot:
        p.add_argument('--shot', type=int, default=4, help='k abnormal + k normal support images')
        p.add_argument('--iterate', type=int, default=0,
                       help='which draw of the seed list (a-<i>/n-<i>); < 0: seeded random draw')
        p.add_argument('--fewshot_seed_dir', type=Path, default=DEFAULT_SEED_DIR,
                       help='folder of <Obj>/<k>-shot.txt seed lists')
    if training:
        p.add_argument('--epoch', type=int, default=PAPER.epochs, help='epochs')
        p.add_argument('--learning_rate', type=float, default=learning_rate, help='Adam learning rate')
        p.add_argument('--save_model', type=int, default=1, help='1: save the selected adapters, 0: do not')
        p.add_argument('--eval_batch_size', type=int, default=16,
                       help='images per inference batch for model selection (scores do not depend on it)')
        p.add_argument('--cache_streams', choices=('auto', 'on', 'off'), nargs='?', const='on', default='auto',
                       help='keep the streams of the scored images through the frozen blocks up to the first '
                            'adapters in memory: about 25 %% faster evaluations for 1.2 MB per image (ViT-L, '
                            '240 px; BrainMRI\'s 3715 test images: 4.4 GB); auto: on a GPU where they fit in '
                            'half its free memory, off on a CPU')
        p.add_argument('--selection', choices=SELECTION_MODES, default='test',
                       help="which state is kept and reported: 'test' the best on the test set (the paper), "
                            "'valid' the best on valid/ minus the support images, 'last' the final one")
        p.add_argument('--resume', action='store_true',
                       help='continue after the last finished epoch of <save_path>/<Obj>.resume.pt (same flags)')
    else:
        p.add_argument('--save_vis', type=Path, default=None, help='write a heatmap PNG per test image to this folder')
    if few_shot and not training:
        # The authors' test_few.py took its training flags too; accepted so their commands still run.
        for flag in ('--epoch', '--learning_rate', '--save_model'):
            p.add_argument(flag, type=float, help=argparse.SUPPRESS)
    return p


def run(main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run a script's main and return the exit status: 0, or the int main returns (bench.py and
    gpu_check.py: 1 when scores disagree); a problem with the user's input becomes one line and
    status 2, Ctrl-C one line and status 130 (the shell's for SIGINT)."""
    try:
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
