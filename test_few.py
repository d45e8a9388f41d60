"""Few-shot MVFA test: text (zero-shot) and memory-bank (few-shot) scores of the test set, fused."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from dataset.validate import validate_object
from mvfa.runs.cli import FEW_SHOT_CHECKPOINTS, ZERO_SHOT_CHECKPOINTS, run, script_outputs, script_parser
from mvfa.common.outputs import check_outputs, checkpoint_path
from mvfa.common.sidecar import SIDECAR_FLAGS, adopt_sidecar_flags, check_checkpoint_exists, refuse_few_shot_adapters

if TYPE_CHECKING:
    from mvfa.engine.evaluation import Evaluation


def main(argv: Optional[List[str]] = None) -> Evaluation:
    arguments = script_parser('test_few', __doc__)
    args = arguments.parse_args(argv)
    # Normal-only runs read the zero-shot adapters, trained without any image of the target object.
    if args.save_path is None:
        args.save_path = ZERO_SHOT_CHECKPOINTS if args.normal_only else FEW_SHOT_CHECKPOINTS
    check_outputs(script_outputs(args))
    checkpoint = checkpoint_path(args)
    made = adopt_sidecar_flags(args, arguments.given(argv, SIDECAR_FLAGS), checkpoint)
    if args.normal_only:
        refuse_few_shot_adapters(made, checkpoint, '--normal_only', f'--save_path {ZERO_SHOT_CHECKPOINTS}')
    validate_object(args.data_path, args.obj, shot=args.shot, iterate=args.iterate, seed_dir=args.fewshot_seed_dir,
                    normal_only=args.normal_only)
    check_checkpoint_exists(checkpoint)
    # Imported once the flags, data and checkpoint path are checked: those answer without loading torch.
    from mvfa.runs.few_shot import few_shot_test
    return few_shot_test(args, made)


if __name__ == '__main__':
    raise SystemExit(run(main))
