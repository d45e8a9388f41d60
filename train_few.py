"""Few-shot MVFA: train the adapters on k abnormal + k normal images of the target object.

After every epoch the memory bank is rebuilt and the test set scored; the best epoch
(image + pixel AUROC) is kept as <save_path>/<Obj>.pth, as in the paper. `--selection valid`
scores valid/ minus the support images instead, `--selection last` keeps the final epoch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from dataset.validate import validate_object
from mvfa.runs.cli import run, script_outputs, script_parser
from mvfa.common.outputs import check_outputs

if TYPE_CHECKING:
    from mvfa.engine.evaluation import Evaluation


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = script_parser('train_few', __doc__).parse_args(argv)
    check_outputs(script_outputs(args))
    validate_object(args.data_path, args.obj, shot=args.shot, iterate=args.iterate, seed_dir=args.fewshot_seed_dir,
                    decode=False)
    # Imported once the flags and data paths are checked: those answer without loading torch.
    from mvfa.runs.few_shot import few_shot_training
    return few_shot_training(args)


if __name__ == '__main__':
    raise SystemExit(run(main))
