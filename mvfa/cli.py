"""What the four scripts share: their flags, the set-up of seed, device and model, errors, result files."""
from __future__ import annotations

import argparse
import ctypes
import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional

import numpy as np
import torch
from open_clip.model import CLIP
from torch import Tensor

from CLIP import MultiLevelAdaptedCLIP, WeightsError, create_model
from dataset.bmad import OBJECTS, DataError
from dataset.medical_few import DEFAULT_SEED_DIR
from mvfa.checkpoint import CheckpointError, load_adapters, read_checkpoint, save_adapters
from mvfa.engine import Evaluation, autocast, prepare_for_precision, resolve_precision
from mvfa.metrics import image_metrics, pixel_metrics
from mvfa.selection import SELECTION_MODES, ModelSelection
from prompt import encode_text_with_prompt_ensemble
from utils import setup_seed

# Problems with the user's input: reported as one line, never as a traceback.
USER_ERRORS = (DataError, WeightsError, CheckpointError)
# glibc's mallopt parameters (malloc.h): never serve allocations by mmap, never trim the heap.
M_MMAP_MAX, M_TRIM_THRESHOLD = -4, -1


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that build the model and say where and how it runs (also predict.py's)."""
    p.add_argument('--model_name', default='ViT-L-14-336',
                   help='open_clip model name, a config name in CLIP/model_configs (e.g. tiny-clip), or a JSON path')
    p.add_argument('--pretrain', default='openai',
                   help="'openai' (CLIP/ckpt/ViT-L-14-336px.pt, else open_clip's download), a weights file, or 'none'")
    p.add_argument('--img_size', type=int, default=240, help='input resolution (the paper: 240)')
    p.add_argument('--features_list', type=int, nargs='+', default=[6, 12, 18, 24],
                   help='1-based transformer blocks that get adapters')
    p.add_argument('--seed', type=int, default=111)
    p.add_argument('--device', default=None, help='cuda, mps or cpu (default: cuda if available, else mps, else cpu)')
    p.add_argument('--precision', choices=('auto', 'fp32', 'fp16', 'bf16'), default='auto',
                   help='autocast dtype; auto: fp16 on CUDA (as the authors), fp32 elsewhere')
    p.add_argument('--quick_gelu', action='store_true',
                   help="QuickGELU, as OpenAI trained CLIP (the authors' numbers use exact GELU)")


def build_model(args: argparse.Namespace, device: torch.device,
                checkpoint: Optional[Path] = None) -> MultiLevelAdaptedCLIP:
    """The frozen CLIP with adapters, from the model flags, ready for `--precision`; the checkpoint
    is read first, so a bad one fails before a large model is built."""
    adapters = read_checkpoint(checkpoint) if checkpoint is not None else None
    pretrained = None if args.pretrain.lower() == 'none' else args.pretrain
    clip = create_model(args.model_name, args.img_size, pretrained, device, args.quick_gelu)
    try:
        model = MultiLevelAdaptedCLIP(clip, args.features_list)
    except ValueError as error:
        raise DataError(str(error)) from None
    if adapters is not None:
        load_adapters(model, checkpoint, adapters)
    return prepare_for_precision(model.to(device), resolve_precision(args.precision, device))


def parser(description: str, obj: str, save_path: str, few_shot: bool, training: bool,
           learning_rate: float = 1e-3) -> argparse.ArgumentParser:
    """The authors' flags (same names and defaults) plus ours; `few_shot`/`training` add theirs."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--obj', default=obj, help=f"target object: {', '.join(OBJECTS)}")
    p.add_argument('--data_path', default='./data/', help='folder holding <Obj>_AD folders')
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
        p.add_argument('--epoch', type=int, default=50, help='epochs')
        p.add_argument('--learning_rate', type=float, default=learning_rate, help='Adam learning rate')
        p.add_argument('--save_model', type=int, default=1, help='1: save the selected adapters, 0: do not')
        p.add_argument('--eval_batch_size', type=int, default=16,
                       help='images per inference batch for model selection (scores do not depend on it)')
        p.add_argument('--cache_streams', action='store_true',
                       help='keep the streams of the scored images through the frozen blocks up to the first '
                            'adapters in memory: about 25 %% faster evaluations for 1.2 MB per image (ViT-L, '
                            '240 px; BrainMRI\'s 3715 test images: 4.4 GB)')
        p.add_argument('--selection', choices=SELECTION_MODES, default='test',
                       help="which state is kept and reported: 'test' the best on the test set (the paper), "
                            "'valid' the best on valid/ minus the support images, 'last' the final one")
        if few_shot:
            p.add_argument('--resume', action='store_true',
                           help='continue after the last finished epoch of <save_path>/<Obj>.resume.pt (same flags)')
    else:
        p.add_argument('--save_vis', type=Path, default=None, help='write a heatmap PNG per test image to this folder')
    if few_shot and not training:
        # The authors' test_few.py took its training flags too; accepted so their commands still run.
        for flag in ('--epoch', '--learning_rate', '--save_model'):
            p.add_argument(flag, type=float, help=argparse.SUPPRESS)
    return p


def pick_device(name: Optional[str]) -> torch.device:
    """The device asked for, else CUDA, MPS or the CPU, in that order.

    Also makes the CPU flush denormal floats to zero: adapter training produces some, and CPU
    arithmetic on them is several times slower (a ViT-L training step went from 1.3 s to 9 s);
    numbers below 1e-38 change no score. On the CPU, freed memory is kept for reuse.
    """
    torch.set_flush_denormal(True)
    if name:
        device = torch.device(name)
    elif torch.cuda.is_available():
        device = torch.device('cuda')
    elif torch.backends.mps.is_available():
        device = torch.device('mps')
    else:
        device = torch.device('cpu')
    if device.type == 'cpu':
        reuse_freed_memory()
    return device


def reuse_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for the next tensors instead of returning it.

    By default it maps every large tensor afresh and unmaps it when freed, so each batch pays a
    page fault per 4 KiB to get zeroed memory back: a ViT-L forward of 8 images on a 2-core CPU
    spent 3.2 of its 7 s there. The process then stays at its peak memory, as it would with
    jemalloc or tcmalloc. Other C libraries are left alone.
    """
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)


class Session:
    """Seed, device and precision from the shared flags; `load_model` builds the frozen CLIP and adapters.

    Scripts read their data before calling `load_model`, so a data problem is reported at once.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        if args.obj not in OBJECTS:
            raise DataError(f"unknown --obj '{args.obj}': choose one of {', '.join(OBJECTS)}")
        setup_seed(args.seed)
        self.args = args
        self.device = pick_device(args.device)
        self.precision = resolve_precision(args.precision, self.device)
        self.clip: Optional[CLIP] = None

    def load_model(self, checkpoint: Optional[Path] = None) -> MultiLevelAdaptedCLIP:
        model = build_model(self.args, self.device, checkpoint)
        self.clip = model.clipmodel
        return model

    def autocast(self) -> ContextManager:
        return autocast(self.device, self.precision)

    @torch.no_grad()  # not inference_mode: training reads these features under autograd
    def text_features(self, obj: str) -> Tensor:
        with self.autocast():
            return encode_text_with_prompt_ensemble(self.clip, obj, self.device).float()

    def loader_options(self) -> Dict:
        """Worker processes on CUDA, where loading images would otherwise starve the GPU."""
        return {'num_workers': 4, 'pin_memory': True} if self.device.type == 'cuda' else {}

    def checkpoint_path(self) -> Path:
        return Path(self.args.save_path) / f'{self.args.obj}.pth'


def flag_values(args: argparse.Namespace) -> Dict:
    """The flags as JSON values."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def extra_metrics(evaluation: Evaluation) -> Dict[str, Optional[float]]:
    """AP, F1-max and (pixel) AUPRO beside the AUROCs; pixel ones are None for objects without masks
    (and for a selection kept from before a --resume, which stores no per-pixel arrays)."""
    image = image_metrics(evaluation.labels, evaluation.image_scores)
    pixel = pixel_metrics(evaluation.masks, evaluation.pixel_scores) if evaluation.pixel_scores is not None else {}
    return {'image_ap': image['ap'], 'image_f1_max': image['f1_max'], 'pixel_ap': pixel.get('ap'),
            'pixel_f1_max': pixel.get('f1_max'), 'pixel_aupro': pixel.get('aupro')}


def results_record(args: argparse.Namespace, setting: str, evaluation: Evaluation, **extra) -> Dict:
    """The contents of a `--results` file; `selection` is the training scripts' --selection, else None."""
    return {
        'obj': args.obj, 'setting': setting, 'shot': getattr(args, 'shot', None),
        'selection': getattr(args, 'selection', None),
        'image_auroc': evaluation.image_auroc, 'pixel_auroc': evaluation.pixel_auroc, **extra_metrics(evaluation),
        'image_scores': evaluation.image_scores.tolist(), 'labels': evaluation.labels.tolist(),
        **extra, 'flags': flag_values(args),
    }


def adapter_saver(args: argparse.Namespace, session: Session, setting: str
                  ) -> Optional[Callable[[MultiLevelAdaptedCLIP, Dict], None]]:
    """Saves the selected adapters with a JSON sidecar of the flags and the selection; None with --save_model 0."""
    if args.save_model != 1:
        return None
    path = session.checkpoint_path()
    return lambda model, selection: save_adapters(
        model, path, {'setting': setting, **selection, 'flags': flag_values(args)})


def write_results(path: Optional[Path], record: Dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2), encoding='utf-8')
    print(f'results written to {path}')


def report_epoch(epoch: int, losses: List[float]) -> None:
    """Print an epoch's mean loss, warning about the steps skipped for a non-finite loss."""
    skipped = int(np.isnan(losses).sum())
    if skipped:
        warnings.warn(f'epoch {epoch}: skipped {skipped} steps whose loss was not finite', stacklevel=2)
    print(f'epoch {epoch}: loss {np.nanmean(losses):.4f}')


def finish_training(args: argparse.Namespace, setting: str, selection: ModelSelection, model: MultiLevelAdaptedCLIP,
                    test: Callable[[], Evaluation], last_step: str) -> Evaluation:
    """Score the selected state on the test set, print it and write the results file."""
    result, step = selection.tested(model, test, last_step)
    print(f'test set, {step}:\n{result.report(args.obj)}')
    write_results(args.results, results_record(args, setting, result, selected=step))
    return result


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was kept."""

    def __init__(self, selection: ModelSelection, checkpoint: Path) -> None:
        kept = selection.save is not None and selection.evaluation is not None and checkpoint.is_file()
        super().__init__(f'the best checkpoint so far is intact at {checkpoint}' if kept
                         else 'no checkpoint was saved yet')


def run(main: Callable[[Optional[List[str]]], None], argv: Optional[List[str]] = None) -> int:
    """Run a script's main; a problem with the user's input becomes one line and exit status 2,
    Ctrl-C one line and status 130 (the shell's for SIGINT)."""
    try:
        main(argv)
    except USER_ERRORS as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        # On a line of its own: the interrupted progress bar (and the terminal's ^C) end without one.
        print(f'\ninterrupted: {error}' if str(error) else '\ninterrupted', file=sys.stderr)
        return 130
    return 0
