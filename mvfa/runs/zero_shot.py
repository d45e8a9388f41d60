"""Zero-shot MVFA runs: leave-one-out training on the other objects, and the test of an object
never trained on. train_zero.py and test_zero.py parse the flags and call these."""
from __future__ import annotations

import argparse
import random
from contextlib import nullcontext
from typing import Dict, Optional

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.readers import ValidationSet
from dataset.medical_zero import MedTestDataset, MedTrainDataset, stack_batch
from dataset.validate import validate_leave_one_out
from loss import MVFALoss
from mvfa.engine.evaluation import Evaluation, evaluate
from mvfa.runs.inductive import Inductive
from mvfa.common.outputs import checkpoint_path
from mvfa.engine.results import write_results
from mvfa.engine.selection import ModelSelection, selection_loader
from mvfa.engine.progress import Progress
from mvfa.engine.resume import ResumePoint
from mvfa.engine.session import Session, train_epochs
from mvfa.engine.training import AdapterOptimizers, EpochLosses, cache_if_wanted, train_step
from mvfa.engine.visualize import save_evaluation_heatmaps


def zero_shot_training(args: argparse.Namespace) -> Evaluation:
    """Train on the other objects, scoring the target as `--selection` says; the kept state's test."""
    session = Session(args)
    validate_leave_one_out(args.data_path, args.obj, args.img_size)
    train_set = MedTrainDataset(args.data_path, args.obj, args.img_size)
    test_set = MedTestDataset(args.data_path, args.obj, args.img_size)
    # Read before the model is built: a data set without a validation split is reported at once.
    validation = ValidationSet(args.data_path, args.obj, args.img_size) if args.selection == 'valid' else None
    model = session.load_model()
    source_text = [session.text_features(source) for source in train_set.sources]
    target_text = session.text_features(args.obj)
    test_loader = DataLoader(test_set, batch_size=args.eval_batch_size, **session.loader_options())
    scored_loader = cache_if_wanted(model, selection_loader(args.selection, test_loader, lambda: DataLoader(
        validation, batch_size=args.eval_batch_size, **session.loader_options())), args.cache_streams)
    optimizers = AdapterOptimizers(model, args.learning_rate)
    loss_fn = MVFALoss(model.config)
    # The batch order's own generator: the resume state keeps its state beside the global ones.
    shuffler = random.Random(args.seed)

    def score(loader: DataLoader) -> Evaluation:
        return evaluate(model, loader, target_text, test_set.has_masks, progress=False)

    def train_epoch(epoch: int, progress: Progress) -> None:
        """Score every `interval` batches, then save the resume state; resumed within the epoch, its batches
        are drawn again from the shuffler as the epoch began, and those done are skipped undecoded."""
        resumed = progress.resumed_within(epoch)
        if resumed is not None:
            shuffler.setstate(resumed.shuffler_at_start)
        at_start = shuffler.getstate()
        batches = train_set.batches(args.batch_size, shuffler)
        first = 0 if resumed is None else resumed.step
        loader = DataLoader(train_set, batch_sampler=batches[first:], collate_fn=stack_batch,
                            **session.loader_options())
        interval = max(1, len(batches) // model.config.evaluations_per_epoch)
        losses = EpochLosses(None if resumed is None else resumed.losses)
        # Starting the loader draws from torch's generator; the interrupted run drew that as the epoch began,
        # before the state restored here.
        with torch.random.fork_rng(devices=[]) if resumed is not None else nullcontext():
            batch_iterator = iter(loader)
        progress_bar = tqdm(batch_iterator, desc=f'epoch {epoch}', total=len(batches), initial=first, leave=False)
        for step, (images, labels, masks, source) in enumerate(progress_bar, start=first):
            if step % interval == 0 and not (resumed is not None and step == first):  # that scoring is done
                if selection.scores_during_training:
                    evaluation = score(scored_loader)
                    progress.scored(epoch, step, evaluation)
                    if selection.consider(model, evaluation, f'epoch {epoch} batch {step}'):
                        print(f'best so far on {args.selection}, {selection.step}:\n{evaluation.report(args.obj)}')
                progress.reached(ResumePoint(epoch, step, at_start, losses.read()))
            source_masks = masks if train_set.splits[source].has_masks else None
            losses.add(train_step(model, optimizers, loss_fn, images, labels, source_masks, source_text[source]))
        progress.finished(epoch, losses)

    # '>=' as the authors: among equal scores the latest state is kept.
    selection = ModelSelection(args.selection, keep_ties=True, save=session.adapter_saver('zero-shot'))
    # The batch count alone, from a generator of its own (the count does not depend on the order).
    steps_per_epoch = len(train_set.batches(args.batch_size, random.Random(0)))
    return train_epochs(session, 'zero-shot', model, optimizers, selection, train_epoch, lambda: score(test_loader),
                        f'end of epoch {args.epoch - 1}', test_set.images, steps_per_epoch, shuffler=shuffler)


def zero_shot_test(args: argparse.Namespace, made: Optional[Dict]) -> Evaluation:
    """Score the test set with the text prompts and the adapters of <save_path>/<obj>.pth; `made`: the
    checkpoint's sidecar (None: none), whose flags `args` already took. test_zero.py has checked the data."""
    checkpoint = checkpoint_path(args)
    made = made or {}
    session = Session(args)
    data = MedTestDataset(args.data_path, args.obj, args.img_size)
    model = session.load_model(checkpoint)
    loader = DataLoader(data, batch_size=args.batch_size, **session.loader_options())
    # Zero-shot has no references: `reference` keeps each image's own score, not normalised over the test set.
    inductive = Inductive(len(model.features)) if args.normalisation == 'reference' else None
    evaluation = evaluate(model, loader, session.text_features(args.obj), data.has_masks,
                          keep_maps=args.save_vis is not None, inductive=inductive)
    print(evaluation.report(args.obj))
    if args.save_vis is not None:
        save_evaluation_heatmaps(args.save_vis, args.obj, data.records, evaluation, args.img_size)
    write_results(args, 'zero-shot', evaluation, session.provenance(
        data.images, made.get('selection'), made.get('step'), checkpoint=checkpoint))
    return evaluation
