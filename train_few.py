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

from dataset.medical_few import MedDataset
from dataset.validate import validate_object
from mvfa.cli import Interrupted, Session, adapter_saver, finish_training, parser, report_epoch, run
from mvfa.engine import (Evaluation, MVFALoss, adapter_optimizers, build_memory_bank, cache_streams, embed_images,
                         evaluate, train_step)
from mvfa.resume import load_resume_state, resume_path, save_resume_state
from mvfa.selection import ModelSelection, ValidationSet
from utils import augment


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = parser(__doc__.splitlines()[0], obj='Liver', save_path='./ckpt/few-shot/', few_shot=True,
                  training=True, learning_rate=1e-3).parse_args(argv)
    session = Session(args)
    validate_object(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    model = session.load_model()
    text_features = session.text_features(args.obj)

    abnormal, abnormal_masks = augment(data.fewshot_abnorm_img, data.fewshot_abnorm_mask)
    normal, normal_masks = augment(data.fewshot_norm_img)
    labels = torch.cat([torch.ones(len(abnormal)), torch.zeros(len(normal))])
    # The frozen blocks up to the first adapters give the same stream every epoch: computed once.
    streams = embed_images(model, torch.cat([abnormal, normal]), args.eval_batch_size, session.device,
                           session.precision)
    normal_streams = streams[len(abnormal):]
    train_set = TensorDataset(streams, torch.cat([abnormal_masks, normal_masks]), labels)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(data, batch_size=args.eval_batch_size, **session.loader_options())
    selection_loader = test_loader  # `last` scores nothing during training
    if args.selection == 'valid':
        selection_loader = DataLoader(ValidationSet(args.data_path, args.obj, args.img_size, data.support_images),
                                      batch_size=args.eval_batch_size, **session.loader_options())
    if args.cache_streams and args.selection != 'last':
        selection_loader = cache_streams(model, selection_loader, session.device, session.precision)
    seg_optimizer, det_optimizer = adapter_optimizers(model, args.learning_rate)
    loss_fn = MVFALoss(args.img_size)

    def score(loader: DataLoader) -> Evaluation:
        """The loader's images scored against a memory bank of the model as it is now."""
        bank = build_memory_bank(model, normal_streams, args.eval_batch_size, session.device, session.precision)
        return evaluate(model, loader, text_features, data.seg_flag, args.img_size, session.device,
                        session.precision, bank)

    selection = ModelSelection(args.selection, keep_ties=False, save=adapter_saver(args, session, 'few-shot'))
    resume_file = resume_path(session.checkpoint_path())
    first_epoch = load_resume_state(resume_file, model, (seg_optimizer, det_optimizer), selection, args) \
        if args.resume else 0
    try:
        for epoch in range(first_epoch, args.epoch):
            losses = [train_step(model, seg_optimizer, det_optimizer, loss_fn, images, batch_labels,
                                 masks if data.seg_flag else None, text_features, session.device, session.precision)
                      for images, masks, batch_labels in tqdm(train_loader, desc=f'epoch {epoch}', leave=False)]
            report_epoch(epoch, losses)
            if selection.scores_during_training:
                evaluation = score(selection_loader)
                print(f'{args.selection} set:\n{evaluation.report(args.obj)}')
                if selection.consider(model, evaluation, f'epoch {epoch}'):
                    print('Best result')
            save_resume_state(resume_file, model, (seg_optimizer, det_optimizer), epoch, selection, args)
    except KeyboardInterrupt:
        raise Interrupted(selection, session.checkpoint_path()) from None
    return finish_training(args, 'few-shot', selection, model, lambda: score(test_loader), f'epoch {args.epoch - 1}')


if __name__ == '__main__':
    raise SystemExit(run(main))
