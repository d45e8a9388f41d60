"""Speed of MVFA: the authors' way of running it against ours, on the same model, weights and images.

The reference-style path (`benchmarks.reference`) reproduces how the authors' code ran: one image
at a time, every CLIP weight marked `requires_grad=True` (gradients of the frozen encoder computed
and kept), attention weights requested from every block (no fused attention kernel), the few-shot
test scored per image and per level, and scikit-learn's AUROC. Ours is `frozen_streams` /
`train_step` / `build_memory_bank` / `evaluate` as `train_few.py` runs them. Both score the same
synthetic test set (seg path: maps and masks); the scores must agree. Each path measures the test
pass and the epoch in fresh processes, so that each peak memory is its own.

    python bench.py                                          # ViT-L-14-336, random weights, 240 px, 4-shot
    python bench.py --model_name tiny-clip --features_list 3 6 9 12 --img_size 56 --n_images 4 --shot 1

`--contention` measures instead what another busy process on the CPU costs: our epoch's training
steps at --threads (default: the usable CPUs) under OpenMP's default wait and under the scripts'
passive one, and with one thread, each alone and beside a busy loop that bench.py starts on one core
and stops after each measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from mvfa.runs.cli import run
from mvfa.common.flags import FlagParser, parse_or_exit


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__)
    p.add('model_name')
    p.add('pretrain', default='none', help="'none' (random weights: speed does not depend on them), 'openai' or a "
                                           "weights file")
    p.add('img_size')
    p.add('features_list')
    p.add('n_images', default=8, help='test images, half normal, half abnormal with masks')
    p.add('batch_size', default=8, help='our inference batch (the reference runs batch 1)')
    p.add('shot', help='k abnormal + k normal support images (11 views each)')
    p.add('device')
    p.add('precision', help='autocast of both paths; auto: fp16 on CUDA (as the authors ran), fp32 elsewhere')
    p.add('threads', help="CPU threads of each path (default: as the scripts, the CPUs this process may use)")
    p.add('seed', help='seed of the weights, images and training')
    p.add_argument('--json', type=Path, default=None, help='also write the report to this JSON file')
    p.add_argument('--contention', action='store_true',
                   help='measure the training steps alone and beside a busy process, under three thread settings')
    p.add('repeats', default=3, help='--contention: rounds of every measurement (medians)')
    return parse_or_exit(p, argv)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    # Imported once the flags are parsed: --help and a bad flag answer without loading torch.
    from tqdm import tqdm

    from benchmarks import contention
    from benchmarks.compare import PATHS, PHASES, build_report, format_report, in_fresh_processes
    from mvfa.engine.runtime import pick_device
    from mvfa.engine.session import check_model_flags
    # Here, as one line, rather than as a traceback from each measuring process.
    check_model_flags(args)
    pick_device(args.device)
    if args.contention:
        report = contention.measure(args)
        print(contention.format_report(report))
    else:
        with tqdm(total=len(PATHS) * len(PHASES), desc='measuring', leave=False) as bar:
            report = build_report(args, *(in_fresh_processes(path, args, bar) for path in PATHS))
        print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2), encoding='utf-8')
    return report


def exit_status(argv: Optional[List[str]] = None) -> int:
    """0 when the two paths' scores agree (or --contention, which compares none), 1 when they do not."""
    return 0 if main(argv).get('scores_match', True) else 1


if __name__ == '__main__':
    sys.exit(run(exit_status))
