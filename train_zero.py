"""Zero-shot MVFA: train the adapters on the five other objects (leave-one-out), never on the target.

Five times per epoch the target's test set is scored; the best state (image + pixel AUROC) is
kept as <save_path>/<Obj>.pth, as in the paper. `--selection valid` scores the target's valid/
split instead, `--selection last` keeps the final state.
"""
from __future__ import annotations

import random
from typing import List, Optional

from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.bmad import has_masks
from dataset.medical_zero import MedTestDataset, MedTrainDataset, stack_batch
from dataset.validate import validate_leave_one_out
from mvfa.cli import Interrupted, Session, adapter_saver, finish_training, parser, report_epoch, run
from mvfa.engine import Evaluation, MVFALoss, adapter_optimizers, cache_streams, evaluate, train_step
from mvfa.selection import ModelSelection, ValidationSet

EVALUATIONS_PER_EPOCH = 5


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = parser(__doc__.splitlines()[0], obj='Retina_RESC', save_path='./ckpt/zero-shot/', few_shot=False,
                  training=True, learning_rate=1e-4).parse_args(argv)
    session = Session(args)
    validate_leave_one_out(args.data_path, args.obj, args.img_size)
    train_set = MedTrainDataset(args.data_path, args.obj, args.img_size)
    test_set = MedTestDataset(args.data_path, args.obj, args.img_size)
    model = session.load_model()
    source_text = [session.text_features(source) for source in train_set.sources]
    target_text = session.text_features(args.obj)
    test_loader = DataLoader(test_set, batch_size=args.eval_batch_size, **session.loader_options())
    selection_loader = test_loader  # `last` scores nothing during training
    if args.selection == 'valid':
        selection_loader = DataLoader(ValidationSet(args.data_path, args.obj, args.img_size),
                                      batch_size=args.eval_batch_size, **session.loader_options())
    if args.cache_streams and args.selection != 'last':
        selection_loader = cache_streams(model, selection_loader, session.device, session.precision)
    seg_optimizer, det_optimizer = adapter_optimizers(model, args.learning_rate)
    loss_fn = MVFALoss(args.img_size)
    shuffler = random.Random(args.seed)

    def score(loader: DataLoader) -> Evaluation:
        return evaluate(model, loader, target_text, test_set.seg_flag, args.img_size, session.device,
                        session.precision, progress=False)

    # '>=' as the authors: among equal scores the latest state is kept.
    selection = ModelSelection(args.selection, keep_ties=True, save=adapter_saver(args, session, 'zero-shot'))
    try:
        for epoch in range(args.epoch):
            batches = train_set.batches(args.batch_size, shuffler)
            loader = DataLoader(train_set, batch_sampler=batches, collate_fn=stack_batch, **session.loader_options())
            interval = max(1, len(batches) // EVALUATIONS_PER_EPOCH)
            losses = []
            for step, (images, labels, masks, source) in enumerate(tqdm(loader, desc=f'epoch {epoch}', leave=False)):
                if step % interval == 0 and selection.scores_during_training:
                    evaluation = score(selection_loader)
                    if selection.consider(model, evaluation, f'epoch {epoch} batch {step}'):
                        print(f'best so far on {args.selection}, {selection.step}:\n{evaluation.report(args.obj)}')
                with_masks = has_masks(train_set.sources[source])
                losses.append(train_step(model, seg_optimizer, det_optimizer, loss_fn, images, labels,
                                         masks if with_masks else None, source_text[source], session.device,
                                         session.precision))
            report_epoch(epoch, losses)
    except KeyboardInterrupt:
        raise Interrupted(selection, session.checkpoint_path()) from None
    return finish_training(args, 'zero-shot', selection, model, lambda: score(test_loader),
                           f'end of epoch {args.epoch - 1}')


if __name__ == '__main__':
    raise SystemExit(run(main))
