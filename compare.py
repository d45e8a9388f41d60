"""Compare two results files of the same test set: each AUROC and the paired difference a − b.

Image AUROC: a paired bootstrap over test images (recomputed from the two files' image scores, the same
resamples for both) and DeLong's test; pixel AUROC: the paired bootstrap of the two files' stored
replicates (both written with the same --bootstrap and --bootstrap_seed, the default). The files must
name the same images in the same order, e.g. our run and a run of the authors' checkpoints, or two
ablation rows:

    python compare.py results/few-shot/Brain_4shot_it0.json results/levels/4shot_blocks_12/few-shot/Brain_4shot_it0.json
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from mvfa.runs.cli import run
from mvfa.common.errors import UserError
from mvfa.common.flags import FlagError, FlagParser


def main(argv: Optional[List[str]] = None) -> str:
    p = FlagParser(description=__doc__,
                   example='python compare.py results/zero-shot/Brain_0shot_it0.json other/Brain_0shot_it0.json')
    p.add_argument('a', type=Path, help='a results file (--results of the test or train scripts, reproduce.py)')
    p.add_argument('b', type=Path, help='a results file of the same test images')
    for name in ('bootstrap', 'bootstrap_seed'):
        p.add(name)
    args = p.parse_args(argv)
    if args.bootstrap == 0:
        raise FlagError('--bootstrap must be at least 10 resamples for a comparison, got 0')
    for path in (args.a, args.b):
        if not path.is_file():
            raise UserError(f'no results file {path}')
    # Imported once the flags are checked: --help answers without numpy and scipy.
    from mvfa.studies.comparison import compare_files, comparison_text
    text = comparison_text(args.a, args.b, compare_files(args.a, args.b, args.bootstrap, args.bootstrap_seed))
    print(text, end='')
    return text


if __name__ == '__main__':
    raise SystemExit(run(main))
