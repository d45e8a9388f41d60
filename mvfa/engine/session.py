"""What every script sets up: seed, device, model and text features; the end of a training run and Ctrl-C."""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from CLIP import MultiLevelAdaptedCLIP, create_model
from CLIP.adapter import check_features
from CLIP.factory import LOCAL_WEIGHTS, WeightsError, load_model_config, patch_size
from dataset.readers import DataError
from mvfa.engine.checkpoint import keep_previous, load_adapters, read_checkpoint, save_adapters
from mvfa.engine.cost import RunCost
from mvfa.engine.evaluation import Evaluation
from mvfa.common.flags import FlagError
from mvfa.common.outputs import WriteFailed, checkpoint_path
from mvfa.engine.progress import Progress
from mvfa.engine.resume import ResumePoint
from mvfa.common.flags import flag_values
from mvfa.engine.results import Provenance, write_results
from mvfa.engine.runtime import configure_backends, pick_device, resolve_precision
from mvfa.engine.selection import ModelSelection
from mvfa.engine.training import AdapterOptimizers
from prompt import encode_text_with_prompt_ensemble
from utils import setup_seed

# What to change on the command line when CLIP's weights cannot be had or do not fit (by create_model's argument).
WEIGHTS_REMEDY = {
    'pretrained': f"pass --pretrain a weights file, openai (read from {LOCAL_WEIGHTS['ViT-L-14-336']} or "
                  f"downloaded) or none",
    'model_name': 'pass the --model_name they were trained with',
}
# Image-decoding processes of a CUDA run (at most one per core).
MAX_LOADER_WORKERS = 8


def build_model(args: argparse.Namespace, device: torch.device, precision: str,
                checkpoint: Optional[Path] = None) -> MultiLevelAdaptedCLIP:
    """The frozen CLIP with adapters, from the model flags, on `device` at `precision`; the
    checkpoint is read first, so a bad one fails before a large model is built."""
    adapters = read_checkpoint(checkpoint) if checkpoint is not None else None
    pretrained = None if args.pretrain.lower() == 'none' else args.pretrain
    try:
        clip = create_model(args.model_name, args.img_size, pretrained, device, args.quick_gelu)
    except WeightsError as error:
        raise WeightsError(f'{error}; {WEIGHTS_REMEDY[error.argument]}' if error.argument else str(error)) from None
    try:
        model = MultiLevelAdaptedCLIP(clip, args.features_list, adaptation=args.adaptation)
    except ValueError as error:
        raise DataError(str(error)) from None
    if adapters is not None:
        load_adapters(model, checkpoint, adapters)
    return model.to(device).set_precision(precision)


def check_image_size(model_name: str, img_size: int, config: Optional[Dict] = None) -> None:
    """--img_size must hold at least one patch of the model."""
    patch = patch_size(config or load_model_config(model_name))
    if img_size < patch:
        raise FlagError(f'--img_size must be at least the patch size of {model_name} ({patch} px), got {img_size}')


def check_model_flags(args: argparse.Namespace) -> None:
    """--img_size and --features_list against the model's config (its patch size and depth): checked
    before the data is read, a checkpoint loaded or the model built."""
    config = load_model_config(args.model_name)
    check_image_size(args.model_name, args.img_size, config)
    depth = config['vision_cfg'].get('layers')
    if isinstance(depth, int):  # else not a ViT, which create_model reports
        try:
            check_features(args.features_list, depth)
        except ValueError as error:
            raise FlagError(str(error)) from None


class Session:
    """Seed, device and precision from the shared flags; `load_model` builds the frozen CLIP and adapters.

    Scripts read their data before calling `load_model`, so a data problem is reported at once.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        check_model_flags(args)
        setup_seed(args.seed)
        self.args = args
        self.device = pick_device(args.device)
        self.cost = RunCost(self.device)  # the run's wall time starts here
        self.precision = resolve_precision(args.precision, self.device)
        # getattr: the flags of a results file written before --threads existed (mvfa.studies.figures) lack it.
        configure_backends(self.device, self.precision, getattr(args, 'threads', None))
        self.model: Optional[MultiLevelAdaptedCLIP] = None

    def load_model(self, checkpoint: Optional[Path] = None) -> MultiLevelAdaptedCLIP:
        self.model = build_model(self.args, self.device, self.precision, checkpoint)
        return self.model

    @torch.no_grad()  # not inference_mode: training reads these features under autograd
    def text_features(self, obj: str) -> Tensor:
        """The prompt ensemble's (embed_dim, 2) text features of `obj`, a BMAD object or free text."""
        with self.model.autocast():
            return encode_text_with_prompt_ensemble(self.model.clipmodel, obj, self.device).float()

    def loader_options(self) -> Dict:
        """Worker processes on CUDA, where decoding images in the main process would leave the GPU
        waiting; kept alive between the per-epoch evaluations of training."""
        if self.device.type != 'cuda':
            return {}
        return {'num_workers': min(MAX_LOADER_WORKERS, os.cpu_count() or 1), 'pin_memory': True,
                'persistent_workers': True}

    def provenance(self, images: Sequence[Path], selection: Optional[str], selected: Optional[str],
                   support: Optional[Sequence[Path]] = None, checkpoint: Optional[Path] = None) -> Provenance:
        """How this session's numbers were made, for its results file."""
        return Provenance(images, str(self.device), self.precision, selection, selected, support, checkpoint,
                          self.cost)

    def adapter_saver(self, setting: str) -> Optional[Callable[[MultiLevelAdaptedCLIP, Dict], None]]:
        """Saves the selected adapters with a JSON sidecar of the flags and the selection; None with --save_model 0."""
        if self.args.save_model != 1:
            return None
        path = checkpoint_path(self.args)
        # A resumed run's checkpoint is its own best so far.
        if path.is_file() and not self.args.resume:
            keep_previous(path)
        return lambda model, selection: save_adapters(
            model, path, {'setting': setting, **selection, 'flags': flag_values(self.args)})


def finish_training(session: Session, setting: str, selection: ModelSelection, model: MultiLevelAdaptedCLIP,
                    test: Callable[[], Evaluation], last_step: str, images: Sequence[Path],
                    support: Optional[Sequence[Path]] = None) -> Evaluation:
    """Score the selected state on the test set (`images`), print it and write the results file."""
    args = session.args
    result, step = selection.tested(model, test, last_step)
    print(f'test set, {step}:\n{result.report(args.obj)}')
    write_results(args, setting, result, session.provenance(images, args.selection, step, support))
    return result


def _checkpoint_kept(selection: ModelSelection, checkpoint: Path) -> bool:
    # A checkpoint at the path is this run's: a new run moves an earlier one aside (`keep_previous`).
    return selection.save is not None and selection.evaluation is not None and checkpoint.is_file()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was kept, `how_to_resume` how to go on (if one can)."""

    def __init__(self, selection: ModelSelection, checkpoint: Path, how_to_resume: Optional[str] = None) -> None:
        kept = _checkpoint_kept(selection, checkpoint)
        super().__init__(f'the best checkpoint so far is intact at {checkpoint}' if kept
                         else 'no checkpoint was saved yet')
        self.how_to_resume = how_to_resume


def write_failed(error: WriteFailed, selection: ModelSelection, checkpoint: Path,
                 how_to_resume: Optional[str]) -> WriteFailed:
    """A write that failed during training, its message saying what was kept and how to go on: the
    atomic writes leave the last checkpoint, resume state and results file whole."""
    kept = (f'the last checkpoint saved is intact at {checkpoint}' if _checkpoint_kept(selection, checkpoint)
            else 'no checkpoint was saved')
    return error.noting(kept, how_to_resume or 'nothing to resume from was saved: the same command starts again')


def train_epochs(session: Session, setting: str, model: MultiLevelAdaptedCLIP, optimizers: AdapterOptimizers,
                 selection: ModelSelection, train_epoch: Callable[[int, Progress], None],
                 test: Callable[[], Evaluation], last_step: str, images: Sequence[Path], steps_per_epoch: int,
                 support: Optional[Sequence[Path]] = None, shuffler: Optional[random.Random] = None) -> Evaluation:
    """The skeleton of a training run, zero- or few-shot: resume where `--resume` says, `train_epoch(epoch,
    progress)` for each epoch left (`Progress`: its curve, its resume points) with the resume state saved
    after it, then the selected state's test (`finish_training`). Ctrl-C and a failed write end as one
    line saying what was kept and how to go on. `steps_per_epoch`: the epoch's batches (the curve's steps)."""
    args = session.args
    checkpoint = checkpoint_path(args)
    progress = Progress(args, checkpoint, model, optimizers, selection, shuffler, steps_per_epoch,
                        session.cost.started)
    try:
        start = progress.resume() if args.resume else progress.start
        progress.curve.open()
        for epoch in range(start.epoch, args.epoch):
            train_epoch(epoch, progress)
            progress.reached(ResumePoint(epoch + 1))
        return finish_training(session, setting, selection, model, test, last_step, images, support)
    except KeyboardInterrupt:
        raise Interrupted(selection, checkpoint, progress.how_to_resume()) from None
    except WriteFailed as error:
        raise write_failed(error, selection, checkpoint, progress.how_to_resume()) from None
    finally:
        progress.curve.close()
