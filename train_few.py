"""Few-shot MVFA: train the adapters on k abnormal + k normal images of the target object.

After every epoch the memory bank is rebuilt and the test set scored; the best epoch
(image + pixel AUROC) is kept as <save_path>/<Obj>.pth, as in the paper. `--selection valid`
scores valid/ minus the support images instead, `--selection last` keeps the final epoch.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from dataset.bmad import ValidationSet
from dataset.medical_few import MedDataset
from dataset.validate import validate_object
from loss import MVFALoss
from mvfa.cli import parser
from mvfa.config import PAPER
from mvfa.evaluation import Evaluation, evaluate
from mvfa.memory_bank import build_memory_bank
from mvfa.resume import how_to_resume, load_resume_state, resume_path, save_resume_state
from mvfa.selection import ModelSelection, selection_loader
from mvfa.session import Interrupted, Session, checkpoint_path, finish_training, report_epoch, run
from mvfa.training import AdapterOptimizers, EpochLosses, cache_if_wanted, frozen_streams, train_step
from utils import augment


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = parser(__doc__.splitlines()[0], obj='Liver', save_path='./ckpt/few-shot/', few_shot=True,
                  training=True, learning_rate=PAPER.few_shot_learning_rate).parse_args(argv)
    session = Session(args)
    validate_object(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
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
        ValidationSet(args.data_path, args.obj, args.img_size, data.support_images),
        batch_size=args.eval_batch_size, **session.loader_options())), args.cache_streams)
    optimizers = AdapterOptimizers(model, args.learning_rate)
    loss_fn = MVFALoss(args.img_size, model.config)

    def score(loader: DataLoader) -> Evaluation:
        """The loader's images scored against a memory bank of the model as it is now."""
        bank = build_memory_bank(model, normal_streams, args.eval_batch_size, from_streams=True)
        return evaluate(model, loader, text_features, data.has_masks, bank)

    # '>' as the authors: among equal scores the earliest epoch is kept.
    selection = ModelSelection(args.selection, keep_ties=False, save=session.adapter_saver('few-shot'))
    resume_file = resume_path(checkpoint_path(args))
    first_epoch = load_resume_state(resume_file, model, optimizers, selection, args) if args.resume else 0
    saved_epoch = first_epoch - 1  # the last epoch the resume file holds for this run; -1: none
    try:
        for epoch in range(first_epoch, args.epoch):
            losses = EpochLosses()
            for batch_streams, batch_masks, batch_labels in tqdm(train_loader, desc=f'epoch {epoch}', leave=False):
                losses.add(train_step(model, optimizers, loss_fn, batch_streams, batch_labels,
                                      batch_masks if data.has_masks else None, text_features, from_streams=True))
            report_epoch(epoch, losses)
            if selection.scores_during_training:
                evaluation = score(scored_loader)
                print(f'{args.selection} set:\n{evaluation.report(args.obj)}')
                if selection.consider(model, evaluation, f'epoch {epoch}'):
                    print('Best result')
            save_resume_state(resume_file, model, optimizers, epoch, selection, args)
            saved_epoch = epoch
    except KeyboardInterrupt:
        raise Interrupted(selection, checkpoint_path(args), how_to_resume(resume_file, saved_epoch)) from None
    return finish_training(session, 'few-shot', selection, model, lambda: score(test_loader), f'epoch {args.epoch - 1}',
                           data.images, data.support_images)


if __name__ == '__main__':
    raise SystemExit(run(main))
