"""Zero-shot MVFA test: score an object never seen in training with its text prompts alone."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from mvfa.cli import ZERO_SHOT_CHECKPOINTS, parser, run, script_outputs
from mvfa.flags import MODEL_FLAGS
from mvfa.outputs import check_outputs

if TYPE_CHECKING:
    from mvfa.evaluation import Evaluation


def main(argv: Optional[List[str]] = None) -> Evaluation:
    arguments = parser(__doc__, obj='Retina_RESC', save_path=ZERO_SHOT_CHECKPOINTS, few_shot=False,
                       training=False, example='python test_zero.py --obj Brain')
    args = arguments.parse_args(argv)
    check_outputs(script_outputs(args))
    # Imported once the flags are parsed: --help and a bad flag answer without loading torch.
    from mvfa.zero_shot import zero_shot_test
    return zero_shot_test(args, arguments.given(argv, MODEL_FLAGS))


if __name__ == '__main__':
    raise SystemExit(run(main))
