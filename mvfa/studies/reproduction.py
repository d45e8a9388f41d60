"""What reproduce.py does: its flags; for the main tables or a study, plan the runs (mvfa/studies/plan.py),
check them all, run those not done yet with --launcher (mvfa/studies/launchers.py), and tabulate from the
results files (mvfa/studies/tables.py, mvfa/studies/studies.py). `--status` says where each run stands.

The same command run again skips the runs whose results file exists (made with the same flags), waits for
those still queued on SLURM, and runs the others; interrupted training continues from its resume state.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from mvfa.common.config import PAPER
from mvfa.common.flags import DATA_PATH, NORMALISATION_HELP, PASS_THROUGH, FlagError, FlagParser
from mvfa.common.outputs import Output, atomic_write, check_outputs
from mvfa.runs.cli import add_model_arguments
from mvfa.studies import launchers
from mvfa.studies.launchers import Job, Scripts
from mvfa.studies.plan import RELEASED, SETTINGS, Run, check_runs, finished, plan, run_outputs
from mvfa.studies.studies import STUDIES, STUDY_HELP
from mvfa.studies.tables import (cost_markdown, cost_rows, made_with, made_with_text, summarise, write_cost,
                                 write_summary)

LAUNCH_FLAGS = ('launcher', 'devices', 'slurm_partition', 'slurm_time', 'slurm_gpus_per_job', 'slurm_cpus_per_job',
                'slurm_mem', 'slurm_account', 'slurm_sbatch')


def parse_args(argv: Optional[Sequence[str]], description: Optional[str] = None) -> argparse.Namespace:
    p = FlagParser(description=description)
    p.add_argument('--obj', nargs='+', default=['all'],
                   help="BMAD objects or categories of --data_path (MVTec AD, VisA), or 'all'")
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=SETTINGS,
                   help='zero-shot: leave-one-out training (Table 1); few-shot: k-shot adaptation (Table 2)')
    p.add('shots', default=[4], help='few-shot k (the paper: 4; 2, 4, 8 and 16 have seed lists)')
    p.add('iterates', default=[0], help='few-shot draws: lines a-<i>/n-<i> of the seed lists')
    p.add('random_draws', help='instead of --iterates: N seeded random draws (--iterate -1, --seed seed+i)')
    p.add('selection', help="model selection of training (see train_few.py --help); 'test' as the paper. "
                            "With --skip_train the checkpoint's sidecar names it")
    p.add_argument('--skip_train', action='store_true',
                   help='test existing checkpoints instead of training (<ckpt_dir>/zero-shot/<Obj>.pth, '
                        '<ckpt_dir>/few-shot/<k>shot_<draw>/<Obj>.pth; where missing, the authors\' released '
                        '<Obj>.pth)')
    p.add_argument('--results_dir', type=Path, default=Path('results'),
                   help='folder of the results files (one per run, with its log under <setting>/logs/) and '
                        'summary.md / summary.csv / cost.csv')
    p.add_argument('--ckpt_dir', type=Path, default=Path('ckpt/reproduce'),
                   help="folder of this script's checkpoints: away from the authors' released ones in "
                        f"{RELEASED['zero-shot']}/ and {RELEASED['few-shot']}/")
    add_model_arguments(p)
    # Handed to the runs only where given: their defaults are the scripts'.
    p.add('epoch', default=None, help=f"training epochs (default: the scripts' {PAPER.epochs})")
    p.add('batch_size', default=None, help="the scripts' --batch_size (default: theirs)")
    p.add('data_path', default=None, help=f"folder holding <Obj>_AD folders, or MVTec AD or VisA (default: the "
                                          f"scripts' {DATA_PATH})")
    p.add('fewshot_seed_dir', default=None, type=str, help="folder of the few-shot seed lists (default: the scripts')")
    p.add_argument('--study', choices=tuple(STUDIES), help=STUDY_HELP)
    p.add('normalisation', nargs='+', default=['test'],
          help=f'{NORMALISATION_HELP}. Both: one row each in the tables, each checkpoint tested both ways '
               '(training selects with the test rule, so training runs also write test rows)')
    for name in ('bootstrap', 'bootstrap_seed', *LAUNCH_FLAGS):
        p.add(name)
    p.add_argument('--status', action='store_true',
                   help='print where each run of the plan stands (done, running, pending, failed with the end of '
                        'its log, not started) and how long it took; runs nothing')
    args = p.parse_args(argv)
    if args.study is not None and (len(set(args.normalisation)) > 1 or
                                   (args.normalisation != ['test'] and not args.skip_train)):
        # A study's rows are its variants: two normalisations (training also tests the test rule) would pool.
        raise FlagError('--study takes one --normalisation: train the study first, then run it again with '
                        '--skip_train --normalisation reference')
    for name in sorted(p.given(argv, LAUNCH_FLAGS[1:])):
        owner = 'local' if name == 'devices' else 'slurm'
        if owner != args.launcher:
            raise FlagError(f'--{name} is a flag of --launcher {owner}, not of --launcher {args.launcher}')
    # Only these reach the scripts, so that a test run takes the other model flags from the checkpoint's sidecar;
    # --shots too, whose default a study replaces when it is not given.
    args.given = p.given(argv, [flag for flag, _ in PASS_THROUGH] + ['shots'])
    return args


class RunsFailed(Exception):
    """Some runs of the plan ended without their results file; the others are done."""


def check_launcher(args: argparse.Namespace) -> None:
    if args.launcher == 'slurm':
        launchers.check_slurm(args)
    elif args.launcher == 'local':
        launchers.parse_devices(args.devices)


def load_records(runs: List[Run], args: argparse.Namespace) -> List[Dict]:
    return [json.loads(task.results_path(args.results_dir).read_text(encoding='utf-8')) for task in runs]


def plan_and_run(args: argparse.Namespace, variants: List[argparse.Namespace],
                 scripts: Scripts) -> List[Tuple[List[Run], List[Dict]]]:
    """The runs and results records of each set of flags. Every run is checked, and every results file found
    compared with its run's flags, before the first run starts; then the runs not done are launched together."""
    plans = [plan(variant) for variant in variants]
    for runs, variant in zip(plans, variants):
        check_outputs(run_outputs(runs, variant))
    for runs, variant in zip(plans, variants):
        check_runs(runs, variant)
    check_launcher(args)
    pending: List[Job] = []
    queued: List[Job] = []
    total = done_count = 0
    for runs, variant in zip(plans, variants):
        for job, done in zip(launchers.jobs(runs, variant), finished(runs, variant)):
            total += 1
            if done:
                done_count += 1
            elif launchers.still_queued(job, launchers.read_record(job)):
                queued.append(job)
            else:
                pending.append(job)
    if queued and args.launcher != 'slurm':
        names = ', '.join(job.run.describe() for job in queued[:3])
        raise launchers.LauncherError(f'{len(queued)} runs of this plan are still running ({names}): wait for '
                                      'them (reproduce.py --status) or stop them, then run the same command again')
    print(f'{total} runs: {done_count} done (results found), {len(queued)} still queued, {len(pending)} to run '
          f'(--launcher {args.launcher})', flush=True)
    failed = launchers.launch(pending, queued, scripts, args)
    if failed:
        raise RunsFailed(f'{len(failed)} of {total} runs failed (their logs end above): the same command runs them '
                         'again, training continuing from its resume state')
    return [(runs, load_records(runs, variant)) for runs, variant in zip(plans, variants)]


def print_status(variants: List[argparse.Namespace]) -> None:
    """Every run of the plan: its state, how long it took or where it runs, and a failed one's log end."""
    counts: Dict[str, int] = {}
    for variant in variants:
        runs = plan(variant)
        for job, done in zip(launchers.jobs(runs, variant), finished(runs, variant)):
            state, detail = launchers.status(job, done)
            counts[state] = counts.get(state, 0) + 1
            first, _, rest = detail.partition('\n')
            print(f'{state:<12} {job.run.describe()}' + (f': {first}' if first else ''))
            if rest:
                print('\n'.join(f'    {line}' for line in rest.splitlines()))
    print(', '.join(f'{count} {state}' for state, count in counts.items()))


def run_study(args: argparse.Namespace, scripts: Scripts) -> List[Dict]:
    """A study of mvfa/studies/studies.py: its variants' runs, then its tables and figures in
    <results_dir>/<study>/."""
    study = STUDIES[args.study]
    variants = study.variants(args)
    if args.status:
        print_status([variant.args for variant in variants])
        return []
    results = plan_and_run(args, [variant.args for variant in variants], scripts)
    outcomes = [(variant, runs, records) for variant, (runs, records) in zip(variants, results)]
    every_run = [task for runs, _ in results for task in runs]
    every_record = [record for _, records in results for record in records]
    made = made_with(every_record)
    cost = cost_rows(every_run, every_record)
    out = args.results_dir / args.study
    rows, text = study.write(args.study, outcomes, made, made_with_text(made), out)
    text += cost_markdown(cost)
    atomic_write(out / 'summary.md', text)
    write_cost(out, cost)
    print(text)
    print(f'{args.study} study written to {out}')
    return rows


def reproduce(args: argparse.Namespace, scripts: Scripts) -> List[Dict]:
    """The main tables (or --study): their rows, as summary.csv has them."""
    check_outputs([Output('--results_dir', args.results_dir)]
                  + ([] if args.skip_train else [Output('--ckpt_dir', args.ckpt_dir)]))
    if args.study is not None:
        return run_study(args, scripts)
    if args.status:
        print_status([args])
        return []
    (runs, records), = plan_and_run(args, [args], scripts)
    rows = summarise(runs, records)
    made = made_with(records)
    text = write_summary(rows, made, cost_rows(runs, records), args.results_dir)
    print(text)
    return rows


def main(argv: Optional[Sequence[str]], description: str, scripts: Scripts) -> object:
    """reproduce.py's main: the table rows, or exit status 1 where runs failed (after saying which)."""
    args = parse_args(argv, description)
    try:
        return reproduce(args, scripts)
    except RunsFailed as error:
        print(f'error: {error}', flush=True)
        return 1

