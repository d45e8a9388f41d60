"""Zero-shot MVFA test: score an object never seen in training with its text prompts alone."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from dataset.validate import validate_object
from mvfa.runs.cli import run, script_outputs, script_parser
from mvfa.common.outputs import check_outputs, checkpoint_path
from mvfa.common.sidecar import SIDECAR_FLAGS, adopt_sidecar_flags, check_checkpoint_exists, refuse_few_shot_adapters

if TYPE_CHECKING:
    from mvfa.engine.evaluation import Evaluation


def main(argv: Optional[List[str]] = None) -> Evaluation:
    arguments = script_parser('test_zero', __doc__)
    args = arguments.parse_args(argv)
    check_outputs(script_outputs(args))
    checkpoint = checkpoint_path(args)
    made = adopt_sidecar_flags(args, arguments.given(argv, SIDECAR_FLAGS), checkpoint)
    refuse_few_shot_adapters(made, checkpoint, 'test_zero.py', 'train_zero.py trains them; test_few.py tests these')
    validate_object(args.data_path, args.obj)
    check_checkpoint_exists(checkpoint)
    # Imported once the flags, data and checkpoint path are checked: those answer without loading torch.
    from mvfa.runs.zero_shot import zero_shot_test
    return zero_shot_test(args, made)


if __name__ == '__main__':
    raise SystemExit(run(main))
