"""Few-shot MVFA: train the adapters on k abnormal + k normal images of the target object.

After every epoch the memory bank is rebuilt and the test set scored; the best epoch
(image + pixel AUROC) is kept as <save_path>/<Obj>.pth, as in the paper.
"""
from __future__ import annotations

import warnings
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from dataset.medical_few import MedDataset
from mvfa.checkpoint import save_adapters
from mvfa.cli import Session, parser, results_record, run, write_results
from mvfa.engine import Evaluation, MVFALoss, adapter_optimizers, build_memory_bank, evaluate, train_step
from utils import augment


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = parser(__doc__.splitlines()[0], obj='Liver', save_path='./ckpt/few-shot/', few_shot=True,
                  training=True, learning_rate=1e-3).parse_args(argv)
    session = Session(args)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    model = session.load_model()
    text_features = session.text_features(args.obj)

    abnormal, abnormal_masks = augment(data.fewshot_abnorm_img, data.fewshot_abnorm_mask)
    normal, normal_masks = augment(data.fewshot_norm_img)
    labels = torch.cat([torch.ones(len(abnormal)), torch.zeros(len(normal))])
    train_set = TensorDataset(torch.cat([abnormal, normal]), torch.cat([abnormal_masks, normal_masks]), labels)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(data, batch_size=args.eval_batch_size, **session.loader_options())
    seg_optimizer, det_optimizer = adapter_optimizers(model, args.learning_rate)
    loss_fn = MVFALoss(args.img_size)

    best: Optional[Evaluation] = None
    best_epoch = -1
    for epoch in range(args.epoch):
        losses = [train_step(model, seg_optimizer, det_optimizer, loss_fn, images, batch_labels,
                             masks if data.seg_flag else None, text_features, session.device, session.precision)
                  for images, masks, batch_labels in tqdm(train_loader, desc=f'epoch {epoch}', leave=False)]
        skipped = int(np.isnan(losses).sum())
        if skipped:
            warnings.warn(f'epoch {epoch}: skipped {skipped} steps whose loss was not finite', stacklevel=1)
        print(f'epoch {epoch}: loss {np.nanmean(losses):.4f}')
        bank = build_memory_bank(model, normal, args.eval_batch_size, session.device, session.precision)
        evaluation = evaluate(model, test_loader, text_features, data.seg_flag, args.img_size, session.device,
                              session.precision, bank)
        print(evaluation.report(args.obj))
        if best is None or evaluation.selection_score > best.selection_score:
            best, best_epoch = evaluation, epoch
            print('Best result')
            if args.save_model == 1:
                save_adapters(model, session.checkpoint_path())
    write_results(args.results, results_record(args, 'few-shot', best, epoch=best_epoch))
    return best


if __name__ == '__main__':
    raise SystemExit(run(main))
