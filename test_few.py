"""Few-shot MVFA test: text (zero-shot) and memory-bank (few-shot) scores of the test set, fused."""
from __future__ import annotations

from typing import List, Optional

from torch.utils.data import DataLoader

from dataset.medical_few import MedDataset
from dataset.validate import validate_object
from mvfa.checkpoint import MODEL_FLAGS, CheckpointError, adopt_model_flags
from mvfa.cli import parser
from mvfa.evaluation import Evaluation, evaluate
from mvfa.memory_bank import build_memory_bank
from mvfa.results import write_results
from mvfa.session import Session, checkpoint_path, run
from mvfa.visualize import save_evaluation_heatmaps
from utils import augment

# Where the adapters are read from unless --save_path says otherwise: normal-only runs use the
# zero-shot ones, which were trained without any image of the target object.
FEW_SHOT_CHECKPOINTS, ZERO_SHOT_CHECKPOINTS = './ckpt/few-shot/', './ckpt/zero-shot/'


def main(argv: Optional[List[str]] = None) -> Evaluation:
    arguments = parser(__doc__.splitlines()[0], obj='Liver', save_path=None, few_shot=True, training=False)
    arguments.add_argument('--normal_only', action='store_true',
                           help='memory bank of the k normal support images on the zero-shot adapters '
                                f'(--save_path defaults to {ZERO_SHOT_CHECKPOINTS}, else {FEW_SHOT_CHECKPOINTS}); '
                                'no abnormal image is needed')
    args = arguments.parse_args(argv)
    if args.save_path is None:
        args.save_path = ZERO_SHOT_CHECKPOINTS if args.normal_only else FEW_SHOT_CHECKPOINTS
    checkpoint = checkpoint_path(args)
    made = adopt_model_flags(args, arguments.given(argv, MODEL_FLAGS), checkpoint) or {}
    if args.normal_only and made.get('setting') == 'few-shot':
        raise CheckpointError(f'{checkpoint} holds few-shot adapters, trained on abnormal images of their object: '
                              f'--normal_only needs zero-shot ones (--save_path {ZERO_SHOT_CHECKPOINTS})')
    session = Session(args)
    validate_object(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir,
                    normal_only=args.normal_only)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir,
                      normal_only=args.normal_only)
    model = session.load_model(checkpoint)
    text_features = session.text_features(args.obj)
    normal, _ = augment(data.fewshot_norm_img)
    bank = build_memory_bank(model, normal, args.batch_size)
    loader = DataLoader(data, batch_size=args.batch_size, **session.loader_options())
    evaluation = evaluate(model, loader, text_features, data.has_masks, bank, keep_maps=args.save_vis is not None)
    print(evaluation.report(args.obj))
    if args.save_vis is not None:
        save_evaluation_heatmaps(args.save_vis, args.obj, data.images, evaluation, args.img_size)
    write_results(args, 'normal-only' if args.normal_only else 'few-shot', evaluation, session.provenance(
        data.images, made.get('selection'), made.get('step'), data.support_images, checkpoint))
    return evaluation


if __name__ == '__main__':
    raise SystemExit(run(main))
