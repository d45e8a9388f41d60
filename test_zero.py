"""Zero-shot MVFA test: score an object never seen in training with its text prompts alone."""
from __future__ import annotations

from typing import List, Optional

from torch.utils.data import DataLoader

from dataset.medical_zero import MedTestDataset
from dataset.validate import validate_object
from mvfa.checkpoint import MODEL_FLAGS, adopt_model_flags
from mvfa.cli import parser
from mvfa.evaluation import Evaluation, evaluate
from mvfa.results import write_results
from mvfa.session import Session, checkpoint_path, run
from mvfa.visualize import save_evaluation_heatmaps


def main(argv: Optional[List[str]] = None) -> Evaluation:
    arguments = parser(__doc__.splitlines()[0], obj='Retina_RESC', save_path='./ckpt/zero-shot/', few_shot=False,
                       training=False)
    args = arguments.parse_args(argv)
    checkpoint = checkpoint_path(args)
    made = adopt_model_flags(args, arguments.given(argv, MODEL_FLAGS), checkpoint) or {}
    session = Session(args)
    validate_object(args.data_path, args.obj, args.img_size)
    data = MedTestDataset(args.data_path, args.obj, args.img_size)
    model = session.load_model(checkpoint)
    loader = DataLoader(data, batch_size=args.batch_size, **session.loader_options())
    evaluation = evaluate(model, loader, session.text_features(args.obj), data.has_masks,
                          keep_maps=args.save_vis is not None)
    print(evaluation.report(args.obj))
    if args.save_vis is not None:
        save_evaluation_heatmaps(args.save_vis, args.obj, data.images, evaluation, args.img_size)
    write_results(args, 'zero-shot', evaluation, session.provenance(
        data.images, made.get('selection'), made.get('step'), checkpoint=checkpoint))
    return evaluation


if __name__ == '__main__':
    raise SystemExit(run(main))
