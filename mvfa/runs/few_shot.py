"""Few-shot MVFA runs: training on k abnormal + k normal support images, and the test that fuses
text and memory-bank scores. train_few.py and test_few.py parse the flags and call these."""
from __future__ import annotations

import argparse
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from dataset.readers import ValidationSet
from dataset.medical_few import MedDataset
from dataset.validate import validate_object
from loss import MVFALoss
from mvfa.engine.evaluation import Evaluation, evaluate
from mvfa.runs.inductive import Inductive
from mvfa.method.memory_bank import build_memory_bank
from mvfa.runs.prediction import Reference
from mvfa.common.outputs import checkpoint_path
from mvfa.engine.results import write_results
from mvfa.engine.selection import ModelSelection, selection_loader
from mvfa.engine.progress import Progress
from mvfa.engine.session import Session, train_epochs
from mvfa.engine.training import AdapterOptimizers, EpochLosses, cache_if_wanted, frozen_streams, train_step
from mvfa.engine.visualize import save_evaluation_heatmaps
from utils import augment


def few_shot_training(args: argparse.Namespace) -> Evaluation:
    """Train on the support images, scoring after every epoch as `--selection` says; the kept state's test."""
    session = Session(args)
    validate_object(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    # Read before the model is built: a data set without a validation split is reported at once.
    validation = ValidationSet(args.data_path, args.obj, args.img_size, data.support_images) \
        if args.selection == 'valid' else None
    model = session.load_model()
    text_features = session.text_features(args.obj)

    abnormal, abnormal_masks = augment(data.fewshot_abnorm_img, data.fewshot_abnorm_mask)
    normal, normal_masks = augment(data.fewshot_norm_img)
    # The frozen blocks up to the first adapters give the same stream every epoch: computed once,
    # and the whole training set kept on the device.
    streams = frozen_streams(model, torch.cat([abnormal, normal]), args.eval_batch_size)
    normal_streams = streams[len(abnormal):]
    labels = torch.cat([torch.ones(len(abnormal)), torch.zeros(len(normal))]).to(model.device)
    masks = torch.cat([abnormal_masks, normal_masks]).to(model.device)
    train_loader = DataLoader(TensorDataset(streams, masks, labels), batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(data, batch_size=args.eval_batch_size, **session.loader_options())
    scored_loader = cache_if_wanted(model, selection_loader(args.selection, test_loader, lambda: DataLoader(
        validation, batch_size=args.eval_batch_size, **session.loader_options())), args.cache_streams)
    optimizers = AdapterOptimizers(model, args.learning_rate)
    loss_fn = MVFALoss(model.config)

    def score(loader: DataLoader) -> Evaluation:
        """The loader's images scored against a memory bank of the model as it is now."""
        bank = build_memory_bank(model, normal_streams, args.eval_batch_size, from_streams=True)
        return evaluate(model, loader, text_features, data.has_masks, bank)

    def train_epoch(epoch: int, progress: Progress) -> None:
        """Few-shot epochs are short: they resume from their start, and score at their end."""
        losses = EpochLosses()
        for batch_streams, batch_masks, batch_labels in tqdm(train_loader, desc=f'epoch {epoch}', leave=False):
            losses.add(train_step(model, optimizers, loss_fn, batch_streams, batch_labels,
                                  batch_masks if data.has_masks else None, text_features, from_streams=True))
        progress.finished(epoch, losses)
        if selection.scores_during_training:
            evaluation = score(scored_loader)
            progress.scored(epoch, len(train_loader), evaluation)
            print(f'{args.selection} set:\n{evaluation.report(args.obj)}')
            if selection.consider(model, evaluation, f'epoch {epoch}'):
                print('Best result')

    # '>' as the authors: among equal scores the earliest epoch is kept.
    selection = ModelSelection(args.selection, keep_ties=False, save=session.adapter_saver('few-shot'))
    return train_epochs(session, 'few-shot', model, optimizers, selection, train_epoch, lambda: score(test_loader),
                        f'epoch {args.epoch - 1}', data.images, len(train_loader), data.support_images)


def few_shot_test(args: argparse.Namespace, made: Optional[Dict]) -> Evaluation:
    """Score the test set with the adapters of <save_path>/<obj>.pth and a memory bank of the normal
    support images; `made`: the checkpoint's sidecar (None: none), whose flags `args` already took.
    test_few.py has checked the data."""
    checkpoint = checkpoint_path(args)
    made = made or {}
    session = Session(args)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir,
                      normal_only=args.normal_only)
    model = session.load_model(checkpoint)
    text_features = session.text_features(args.obj)
    if args.normalisation == 'reference':
        # The normal support images as predict.py's references: one bank each, spreads measured leave-one-out.
        reference = Reference(model, data.fewshot_norm_img, text_features, args.batch_size)
        bank, inductive = reference.banks, Inductive(len(model.features), reference.calibration)
    else:
        bank, inductive = build_memory_bank(model, augment(data.fewshot_norm_img)[0], args.batch_size), None
    loader = DataLoader(data, batch_size=args.batch_size, **session.loader_options())
    evaluation = evaluate(model, loader, text_features, data.has_masks, bank, keep_maps=args.save_vis is not None,
                          inductive=inductive)
    print(evaluation.report(args.obj))
    if args.save_vis is not None:
        save_evaluation_heatmaps(args.save_vis, args.obj, data.records, evaluation, args.img_size)
    write_results(args, 'normal-only' if args.normal_only else 'few-shot', evaluation, session.provenance(
        data.images, made.get('selection'), made.get('step'), data.support_images, checkpoint))
    return evaluation
