"""Reproduce the paper's Tables 1 (zero-shot) and 2 (few-shot): train and test every object, then tabulate.

On MVTec AD or VisA (`--data_path` pointing at one) the same runs, in-domain, on their categories;
no numbers were published for them, so the table shows '–' in the paper's columns.

Runs train_zero.py / train_few.py (or, with --skip_train, test_zero.py / test_few.py on existing
checkpoints), one results JSON per run under <results_dir>/<setting>/, then writes
<results_dir>/summary.md and summary.csv: per object our AUROCs (mean ± std over draws) beside
the published ones, and cost.csv: wall time and GPU-hours. For example, the paper's settings on the
authors' seed lists (which hold one draw, line 0, per k; `--random_draws 3` gives three seeded random
draws instead):

    python reproduce.py --obj all --settings zero-shot few-shot --shots 4 --iterates 0

The runs run in this process one after another (`--launcher inline`), one per GPU of this machine
(`--launcher local --devices 0,1,2,3`) or as SLURM jobs (`--launcher slurm --slurm_partition gpu`). The same
command again skips the runs done, waits for those queued, and resumes the others; `--status` says where
each run stands. `--study NAME` runs one of the paper's other studies instead (mvfa/studies/studies.py):
projectors, levels, shots, tsne or level_maps, into <results_dir>/<study>/.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import test_few
import test_zero
import train_few
import train_zero
from mvfa.runs.cli import run
from mvfa.studies import reproduction
from mvfa.studies.launchers import Scripts

SCRIPTS = Scripts({'train_zero': train_zero.main, 'train_few': train_few.main, 'test_zero': test_zero.main,
                   'test_few': test_few.main}, Path(__file__).resolve().parent)


def main(argv: Optional[List[str]] = None) -> object:
    return reproduction.main(argv, __doc__, SCRIPTS)


if __name__ == '__main__':
    raise SystemExit(run(main))
