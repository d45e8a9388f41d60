"""Few-shot MVFA test: text (zero-shot) and memory-bank (few-shot) scores of the test set, fused."""
from __future__ import annotations

from typing import List, Optional

from torch.utils.data import DataLoader

from dataset.medical_few import MedDataset
from mvfa.cli import Session, parser, results_record, run, write_results
from mvfa.engine import Evaluation, build_memory_bank, evaluate
from utils import augment


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = parser(__doc__.splitlines()[0], obj='Liver', save_path='./ckpt/few-shot/', few_shot=True,
                  training=False).parse_args(argv)
    session = Session(args)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    model = session.load_model(session.checkpoint_path())
    text_features = session.text_features(args.obj)
    normal, _ = augment(data.fewshot_norm_img)
    bank = build_memory_bank(model, normal, args.batch_size, session.device, session.precision)
    loader = DataLoader(data, batch_size=args.batch_size, **session.loader_options())
    evaluation = evaluate(model, loader, text_features, data.seg_flag, args.img_size, session.device,
                          session.precision, bank)
    print(evaluation.report(args.obj))
    write_results(args.results, results_record(args, 'few-shot', evaluation))
    return evaluation


if __name__ == '__main__':
    raise SystemExit(run(main))
