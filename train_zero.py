"""Zero-shot MVFA: train the adapters on the five other objects (leave-one-out), never on the target.

Five times per epoch the target's test set is scored; the best state (image + pixel AUROC) is
kept as <save_path>/<Obj>.pth, as in the paper.
"""
from __future__ import annotations

import random
import warnings
from typing import List, Optional

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.bmad import has_masks
from dataset.medical_zero import MedTestDataset, MedTrainDataset, stack_batch
from mvfa.checkpoint import save_adapters
from mvfa.cli import Session, parser, results_record, run, write_results
from mvfa.engine import Evaluation, MVFALoss, adapter_optimizers, evaluate, train_step

EVALUATIONS_PER_EPOCH = 5


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = parser(__doc__.splitlines()[0], obj='Retina_RESC', save_path='./ckpt/zero-shot/', few_shot=False,
                  training=True, learning_rate=1e-4).parse_args(argv)
    session = Session(args)
    train_set = MedTrainDataset(args.data_path, args.obj, args.img_size)
    test_set = MedTestDataset(args.data_path, args.obj, args.img_size)
    model = session.load_model()
    source_text = [session.text_features(source) for source in train_set.sources]
    target_text = session.text_features(args.obj)
    test_loader = DataLoader(test_set, batch_size=args.eval_batch_size, **session.loader_options())
    seg_optimizer, det_optimizer = adapter_optimizers(model, args.learning_rate)
    loss_fn = MVFALoss(args.img_size)
    shuffler = random.Random(args.seed)

    best: Optional[Evaluation] = None
    best_step = ''
    for epoch in range(args.epoch):
        batches = train_set.batches(args.batch_size, shuffler)
        loader = DataLoader(train_set, batch_sampler=batches, collate_fn=stack_batch, **session.loader_options())
        interval = max(1, len(batches) // EVALUATIONS_PER_EPOCH)
        losses = []
        for step, (images, labels, masks, source) in enumerate(tqdm(loader, desc=f'epoch {epoch}', leave=False)):
            if step % interval == 0:
                evaluation = evaluate(model, test_loader, target_text, test_set.seg_flag, args.img_size,
                                      session.device, session.precision, progress=False)
                # '>=' as the authors: among equal scores the latest state is kept.
                if best is None or evaluation.selection_score >= best.selection_score:
                    best, best_step = evaluation, f'epoch {epoch} batch {step}'
                    print(f'best so far, {best_step}:\n{evaluation.report(args.obj)}')
                    if args.save_model == 1:
                        save_adapters(model, session.checkpoint_path())
            with_masks = has_masks(train_set.sources[source])
            losses.append(train_step(model, seg_optimizer, det_optimizer, loss_fn, images, labels,
                                     masks if with_masks else None, source_text[source], session.device,
                                     session.precision))
        skipped = int(np.isnan(losses).sum())
        if skipped:
            warnings.warn(f'epoch {epoch}: skipped {skipped} steps whose loss was not finite', stacklevel=1)
        print(f'epoch {epoch}: loss {np.nanmean(losses):.4f}')
    write_results(args.results, results_record(args, 'zero-shot', best, selected=best_step))
    return best


if __name__ == '__main__':
    raise SystemExit(run(main))
