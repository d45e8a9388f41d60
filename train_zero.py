"""Zero-shot MVFA: train the adapters on the five other objects (leave-one-out), never on the target.

Five times per epoch the target's test set is scored; the best state (image + pixel AUROC) is
kept as <save_path>/<Obj>.pth, as in the paper. `--selection valid` scores the target's valid/
split instead, `--selection last` keeps the final state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from dataset.validate import validate_leave_one_out
from mvfa.runs.cli import run, script_outputs, script_parser
from mvfa.common.outputs import check_outputs

if TYPE_CHECKING:
    from mvfa.engine.evaluation import Evaluation


def main(argv: Optional[List[str]] = None) -> Evaluation:
    args = script_parser('train_zero', __doc__).parse_args(argv)
    check_outputs(script_outputs(args))
    validate_leave_one_out(args.data_path, args.obj, decode=False)
    # Imported once the flags and data paths are checked: those answer without loading torch.
    from mvfa.runs.zero_shot import zero_shot_training
    return zero_shot_training(args)


if __name__ == '__main__':
    raise SystemExit(run(main))
