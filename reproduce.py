"""Reproduce the paper's Tables 1 (zero-shot) and 2 (few-shot): train and test every object, then tabulate.

On MVTec AD or VisA (`--data_path` pointing at one) the same runs, in-domain, on their categories;
no numbers were published for them, so the table shows '–' in the paper's columns.

Runs train_zero.py / train_few.py (or, with --skip_train, test_zero.py / test_few.py on existing
checkpoints) in-process, one results JSON per run under <results_dir>/<setting>/, then writes
<results_dir>/summary.md and summary.csv: per object our AUROCs (mean ± std over draws) beside
the published ones. For example, the paper's settings on the authors' seed lists (which hold one draw,
line 0, per k; `--random_draws 3` gives three seeded random draws instead):

    python reproduce.py --obj all --settings zero-shot few-shot --shots 4 --iterates 0

`--study NAME` runs one of the paper's other studies instead (mvfa/studies/studies.py): projectors, levels,
shots, tsne or level_maps, into <results_dir>/<study>/.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import test_few
import test_zero
import train_few
import train_zero
from dataset.layouts import BMAD, DataError, detect_layout
from dataset.objects import DEFAULT_SEED_DIR, seed_list_path
from dataset.validate import validate_object
from mvfa.runs.cli import FEW_SHOT_CHECKPOINTS, ZERO_SHOT_CHECKPOINTS, add_model_arguments, run
from mvfa.common.config import PAPER
from mvfa.common.flags import (ALL_RUNS, DATA_PATH, FEW_SHOT_RUNS, MADE_WITH, NORMALISATION_HELP, PASS_THROUGH,
                        TRAINING_RUNS, FlagError, FlagParser, flag_text)
from mvfa.common.outputs import FILE, Output, atomic_write, check_outputs, naming_command
from mvfa.studies.paper_results import PAPER_NAMES, PUBLISHED, SOURCE, SOURCES, published
from mvfa.common.sidecar import CheckpointError
from mvfa.studies.studies import STUDIES, STUDY_HELP, mean_and_std, percent, write_csv

SETTINGS = ('zero-shot', 'few-shot')
ZERO_SHOT = 0  # the shot of zero-shot runs, in file names and the published numbers
LEVELS = ('image', 'pixel')
# Every metric of a results file that the summary averages over draws.
METRICS = ('image_auroc', 'pixel_auroc', 'image_ap', 'image_f1_max', 'pixel_ap', 'pixel_aupro')
# Where the authors' released checkpoints go (the test scripts' defaults); --skip_train falls back to them.
RELEASED = {'zero-shot': Path(ZERO_SHOT_CHECKPOINTS), 'few-shot': Path(FEW_SHOT_CHECKPOINTS)}
SCRIPTS: Dict[tuple, Callable] = {('zero-shot', True): train_zero.main, ('few-shot', True): train_few.main,
                                  ('zero-shot', False): test_zero.main, ('few-shot', False): test_few.main}


@dataclass(frozen=True)
class Run:
    """One training (or test) run: an object, a setting, a shot and a draw of support images."""
    setting: str
    obj: str
    shot: int
    draw: str  # 'it<i>': line i of the seed lists; 'rand<i>': seeded random draw i
    iterate: int  # --iterate of the few-shot scripts (-1: random)
    seed: int  # --seed of the scripts
    # The test's --normalisation: 'reference' tests the checkpoint of the same run trained (or found) for 'test'.
    normalisation: str = 'test'

    def results_path(self, results_dir: Path) -> Path:
        suffix = '' if self.normalisation == 'test' else f'_{self.normalisation}'
        return results_dir / self.setting / f'{self.obj}_{self.shot}shot_{self.draw}{suffix}.json'

    def trains(self, args: argparse.Namespace) -> bool:
        """Whether this run trains (else it tests a checkpoint): training runs once, for the test rule."""
        return not args.skip_train and self.normalisation == 'test'

    def save_path(self, ckpt_dir: Path) -> Path:
        """Where this run's checkpoint goes: one per object zero-shot, one per shot and draw few-shot."""
        if self.setting == 'zero-shot':
            return ckpt_dir / self.setting
        return ckpt_dir / self.setting / f'{self.shot}shot_{self.draw}'


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = FlagParser(description=__doc__)
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
                   help='folder of the results files (one per run) and summary.md / summary.csv')
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
    for name in ('bootstrap', 'bootstrap_seed'):
        p.add(name)
    args = p.parse_args(argv)
    if args.study is not None and (len(set(args.normalisation)) > 1 or
                                   (args.normalisation != ['test'] and not args.skip_train)):
        # A study's rows are its variants: two normalisations (training also tests the test rule) would pool.
        raise FlagError('--study takes one --normalisation: train the study first, then run it again with '
                        '--skip_train --normalisation reference')
    # Only these reach the scripts, so that a test run takes the other model flags from the checkpoint's sidecar;
    # --shots too, whose default a study replaces when it is not given.
    args.given = p.given(argv, [flag for flag, _ in PASS_THROUGH] + ['shots'])
    return args


def plan(args: argparse.Namespace) -> List[Run]:
    """Every run, in the paper's table order (MVTec AD, VisA: the categories' order); zero-shot has a
    single draw per object."""
    layout = detect_layout(args.data_path or DATA_PATH)
    # BMAD's objects in the paper's column order; other data sets' categories as found under --data_path.
    known = list(PAPER_NAMES) if isinstance(layout, BMAD) else list(layout.categories())
    for obj in args.obj:
        if obj != 'all':
            layout.check(obj)
    objects = [obj for obj in known if 'all' in args.obj or obj in args.obj]
    if args.random_draws is not None:
        draws = [(f'rand{i}', -1, args.seed + i) for i in range(args.random_draws)]
    else:
        draws = [(f'it{i}', i, args.seed) for i in args.iterates]
    # A checkpoint is trained by the run of the test rule, which the 'reference' run then tests.
    normalisations = list(dict.fromkeys(([] if args.skip_train else ['test']) + list(args.normalisation)))
    runs = []
    for setting in args.settings:
        shots = [ZERO_SHOT] if setting == 'zero-shot' else args.shots
        for shot in shots:
            for obj in objects:
                run_draws = [('it0', 0, args.seed)] if setting == 'zero-shot' else draws
                runs += [Run(setting, obj, shot, draw, iterate, seed, normalisation)
                         for draw, iterate, seed in run_draws for normalisation in normalisations]
    return runs


def script_argv(task: Run, args: argparse.Namespace, save_path: Path) -> List[str]:
    argv = ['--obj', task.obj, '--save_path', str(save_path),
            '--results', str(task.results_path(args.results_dir)), '--seed', str(task.seed)]
    if task.setting == 'few-shot':
        argv += ['--shot', str(task.shot), '--iterate', str(task.iterate)]
    training = task.trains(args)
    if training:
        argv += ['--selection', args.selection]
    else:
        argv += ['--normalisation', task.normalisation]
    for flag, scripts in PASS_THROUGH:
        value = getattr(args, flag)
        takes_it = flag in args.given and (scripts == ALL_RUNS or (scripts == TRAINING_RUNS and training)
                                           or (scripts == FEW_SHOT_RUNS and task.setting == 'few-shot'))
        if isinstance(value, bool):
            argv += [f'--{flag}'] if value and takes_it else []
        elif value is not None and takes_it:
            argv += [f'--{flag}'] + [str(v) for v in (value if isinstance(value, list) else [value])]
    return argv


def existing_checkpoint(task: Run, args: argparse.Namespace) -> Path:
    """The checkpoint --skip_train tests: the run's own, else the authors' released one (one per object)."""
    own = task.save_path(args.ckpt_dir) / f'{task.obj}.pth'
    released = RELEASED[task.setting] / f'{task.obj}.pth'
    return released if not own.is_file() and released.is_file() else own


def check_runs(runs: List[Run], args: argparse.Namespace) -> None:
    """Before the first run starts: every run's data folders, support set and seed list, and with
    --skip_train its checkpoint, so that a problem costs seconds instead of the runs before it
    (each script then checks its images in full)."""
    data_path, seed_dir = args.data_path or DATA_PATH, args.fewshot_seed_dir or DEFAULT_SEED_DIR
    layout = detect_layout(data_path)
    checks = set()
    for task in runs:
        if task.setting == 'few-shot' and task.normalisation == 'reference' and task.shot < 2:
            raise DataError(f'--normalisation reference needs at least 2 normal support images (a spread, '
                            f'leave-one-out): --shots {task.shot} has {task.shot}')
        if args.skip_train and not existing_checkpoint(task, args).is_file():
            raise CheckpointError(f'--skip_train: no checkpoint at {existing_checkpoint(task, args)} for the '
                                  f'{task.setting} run of {task.obj}: train it first (without --skip_train)')
        if args.selection == 'valid' and task.trains(args):
            layout.validation_records(task.obj)  # MVTec AD and VisA have none: say so now
        if task.setting == 'few-shot':
            seed_list = seed_list_path(seed_dir, task.obj, task.shot)
            if task.iterate >= 0 and len(set(args.iterates)) > 1 and not seed_list.is_file():
                # Without the list every --iterate falls back to the same seeded random draw.
                raise DataError(f'no seed list {seed_list}: --iterates {" ".join(map(str, args.iterates))} would '
                                f'repeat one random draw; use --random_draws N for N different draws')
            checks.add((task.obj, task.shot, task.iterate))
        else:  # zero-shot training reads the test sets of the target and of every other category
            others = layout.other_categories(task.obj) if not args.skip_train else []
            checks.update((obj, None, None) for obj in [task.obj] + others)
    for obj, shot, iterate in sorted(checks, key=str):
        validate_object(data_path, obj, shot=shot, iterate=iterate, seed_dir=seed_dir, decode=False)


def run_outputs(runs: List[Run], args: argparse.Namespace) -> List[Output]:
    """Where the runs write: each one's results file and (training) checkpoint folder."""
    places = [Output('--results_dir', task.results_path(args.results_dir), FILE) for task in runs]
    if not args.skip_train:
        places += [Output('--ckpt_dir', task.save_path(args.ckpt_dir)) for task in runs]
    return places


def plan_and_run(variants: List[argparse.Namespace]) -> List[Tuple[List[Run], List[Dict]]]:
    """The runs and results records of each set of flags, every run checked before the first starts."""
    plans = [plan(args) for args in variants]
    for runs, args in zip(plans, variants):
        check_outputs(run_outputs(runs, args))
    for runs, args in zip(plans, variants):
        check_runs(runs, args)
    return [(runs, [execute(task, args) for task in runs]) for runs, args in zip(plans, variants)]


def execute(task: Run, args: argparse.Namespace) -> Dict:
    """Run one task through its script and return its results record."""
    checkpoint = existing_checkpoint(task, args) if args.skip_train else None
    argv = script_argv(task, args, checkpoint.parent if checkpoint else task.save_path(args.ckpt_dir))
    print(f'== {task.setting} {task.obj} {task.shot}-shot {task.draw} ({task.normalisation} normalisation): '
          f'{" ".join(argv)}', flush=True)
    script = SCRIPTS[task.setting, task.trains(args)]
    with naming_command(f'python {script.__module__}.py {" ".join(argv)}'):
        script(argv)
    return json.loads(task.results_path(args.results_dir).read_text(encoding='utf-8'))


# ---------------------------------------------------------------- the summary table

def difference(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    return None if ours is None or theirs is None else ours - theirs


def object_row(setting: str, shot: int, obj: str, records: List[Dict], normalisation: str = 'test') -> Dict:
    """One object's line: our metrics (%) over its draws, the published AUROCs and our difference."""
    row = {'setting': setting, 'shot': shot, 'object': obj, 'paper_name': PAPER_NAMES.get(obj, obj),
           'normalisation': normalisation,
           # A checkpoint without a sidecar (the authors') does not say how it was selected.
           'selection': '/'.join(sorted({r['selection'] or 'unknown' for r in records})), 'draws': len(records)}
    for metric in METRICS:
        row[f'{metric}_mean'], row[f'{metric}_std'] = mean_and_std([percent(r.get(metric)) for r in records])
    for source in SOURCES:
        numbers = published(setting, shot, source, obj) or (None, None)
        for level, number in zip(LEVELS, numbers):
            row[f'{level}_auroc_{source}'] = number
    for level in LEVELS:
        row[f'{level}_auroc_minus_paper'] = difference(row[f'{level}_auroc_mean'], row[f'{level}_auroc_paper'])
    return row


def average_row(rows: List[Dict]) -> Dict:
    """The mean over objects of each column; a published average only where every object has one.

    Pixel columns average the objects with masks only, as the paper does.
    """
    first = rows[0]
    average = {'setting': first['setting'], 'shot': first['shot'], 'object': 'Average', 'paper_name': 'Average',
               'normalisation': first['normalisation'],
               'selection': '/'.join(sorted({r['selection'] for r in rows})),
               'draws': min(r['draws'] for r in rows)}
    for level in LEVELS:
        scored = [r for r in rows if r[f'{level}_auroc_mean'] is not None]
        for metric in METRICS:
            if metric.startswith(level):
                average[f'{metric}_mean'] = mean_and_std([r[f'{metric}_mean'] for r in scored])[0]
                average[f'{metric}_std'] = None
        for source in SOURCES:
            numbers = [r[f'{level}_auroc_{source}'] for r in scored]
            complete = bool(numbers) and None not in numbers
            average[f'{level}_auroc_{source}'] = statistics.mean(numbers) if complete else None
        average[f'{level}_auroc_minus_paper'] = difference(average[f'{level}_auroc_mean'],
                                                           average[f'{level}_auroc_paper'])
    return average


def add_intervals(row: Dict, groups: List[List[Dict]], tested: Optional[List[List[Dict]]]) -> None:
    """A row's 95 % bootstrap intervals (mvfa/studies/comparison.py): `groups` are its records per object (one
    object, or an Average's), each a list of draws; `tested`, the same cells under the test rule, gives a
    reference row its paired difference from them (None elsewhere)."""
    from mvfa.studies import comparison  # numpy and scipy: only when a table is made
    for level in LEVELS:
        scored = [records for records in groups if records[0].get(f'{level}_auroc') is not None]
        row[f'{level}_auroc_low'], row[f'{level}_auroc_high'] = comparison.percent_interval(scored, level)
        if tested is not None and scored:
            tested_scored = [records for records in tested if records[0].get(f'{level}_auroc') is not None]
            difference = comparison.paired_difference(scored, tested_scored, level)
        else:
            difference = None
        row.update(comparison.difference_fields(f'{level}_auroc_minus_test', difference))


def summarise(runs: List[Run], records: List[Dict]) -> List[Dict]:
    """Rows per (setting, shot) table: its objects in the paper's order, then their Average, each AUROC with
    its 95 % interval. Several normalisations: one row each per object and per Average, and the reference
    rows' paired difference from the test rows."""
    rows = []
    tables = list(dict.fromkeys((task.setting, task.shot) for task in runs))
    for setting, shot in tables:
        in_table = [(task, record) for task, record in zip(runs, records)
                    if (task.setting, task.shot) == (setting, shot)]
        objects = list(dict.fromkeys(task.obj for task, _ in in_table))
        normalisations = list(dict.fromkeys(task.normalisation for task, _ in in_table))
        groups = {(obj, normalisation): [record for task, record in in_table
                                         if (task.obj, task.normalisation) == (obj, normalisation)]
                  for obj in objects for normalisation in normalisations}
        paired = 'test' in normalisations and len(normalisations) > 1
        per_object: Dict[str, List[Dict]] = {}
        averages = []
        for normalisation in normalisations:
            table = [object_row(setting, shot, obj, groups[obj, normalisation], normalisation) for obj in objects]
            tested = paired and normalisation != 'test'
            for obj, row in zip(objects, table):
                add_intervals(row, [groups[obj, normalisation]], [groups[obj, 'test']] if tested else None)
            average = average_row(table)
            add_intervals(average, [groups[obj, normalisation] for obj in objects],
                          [groups[obj, 'test'] for obj in objects] if tested else None)
            per_object[normalisation], averages = table, averages + [average]
        rows += [per_object[n][i] for i in range(len(objects)) for n in normalisations] + averages
    return rows


def cell(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return '–'
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def table_title(setting: str, shot: int, bmad: bool = True) -> str:
    """The table's heading; `bmad` False: another data set's categories, which have no published numbers."""
    if not bmad:
        return f'{"Zero-shot" if setting == "zero-shot" else f"Few-shot, k = {shot}"} (no published numbers)'
    if setting == 'zero-shot':
        return 'Zero-shot (paper Table 1)'
    source = 'paper Table 2' if (setting, shot) in PUBLISHED else 'no published numbers'
    return f'Few-shot, k = {shot} ({source})'


def made_with(records: List[Dict]) -> Dict[str, str]:
    """How the summarised numbers were made, from the results files: each value the runs used,
    joined with ' / ' where they differ ('–' where no results file records it)."""
    def values(read: Callable[[Dict], object]) -> str:
        found = dict.fromkeys(flag_text(read(r)) for r in records if read(r) is not None)
        return ' / '.join(found) or '–'
    made = {label: values(lambda r, flag=flag: r.get('flags', {}).get(flag)) for label, flag in MADE_WITH}
    made.update(device=values(lambda r: r.get('device')), precision=values(lambda r: r.get('precision')),
                selection=values(lambda r: r.get('selection') or 'unknown'))
    return made


def made_with_text(made: Dict[str, str]) -> str:
    text = 'Made with: ' + ', '.join(f'{label} {value}' for label, value in made.items()) + '.'
    if 'none' in made['weights'].lower().split(' / '):
        text += ' **Random CLIP weights (--pretrain none): these numbers say nothing about the paper.**'
    return text


def markdown(rows: List[Dict], made: Optional[Dict[str, str]] = None) -> str:
    from mvfa.studies.comparison import auroc_cell, difference_cell  # numpy and scipy: only when a table is made
    both = len({row.get('normalisation', 'test') for row in rows}) > 1
    header = ['Object', 'Selection', 'Draws'] + (['Normalisation'] if both else [])
    for level in LEVELS:
        header += [f'{level.capitalize()} AUROC', 'Paper', "Authors' re-run", 'Ours − paper']
        header += ['Reference − test'] if both else []
    lines = ['# MVFA reproduction: AUROC (%)', '']
    if made is not None:
        lines += [made_with_text(made), '']
    lines += [f'Published numbers: {SOURCE}. Ours: mean ± sample std over the draws of the support set '
             '(no ± for one draw), then [95 % bootstrap interval over test images] of that mean: how far it could '
             'move on another test set of the same size, the draws held fixed (README "Confidence intervals"). '
             'Selection: the model selection each number used (test: best epoch on the '
             'test set, as the paper; valid: best on valid/ minus the support images; last: final epoch). '
             'Pixel AUROC only for the objects with masks; the Average row averages the objects shown.']
    if both:
        lines += ['', 'Normalisation: test, min-max over the test set before fusion (the authors\'); reference, '
                      'each image on its own, by the normal support images. Reference − test: the paired '
                      'difference on the same test images, [95 % interval], p (paired bootstrap).']
    bmad = all(row['object'] in PAPER_NAMES for row in rows if row['object'] != 'Average')
    current = None
    for row in rows:
        if (row['setting'], row['shot']) != current:
            current = row['setting'], row['shot']
            lines += ['', f'## {table_title(*current, bmad)}', '', '| ' + ' | '.join(header) + ' |',
                      '|' + ' --- |' * len(header)]
        name = (row['object'] if row['paper_name'] == row['object']
                else f"{row['paper_name']} ({row['object']})")
        cells = [name, row['selection'], str(row['draws'])] + ([row['normalisation']] if both else [])
        for level in LEVELS:
            cells += [auroc_cell(row[f'{level}_auroc_mean'], row[f'{level}_auroc_std'],
                                 row.get(f'{level}_auroc_low'), row.get(f'{level}_auroc_high')),
                      cell(row[f'{level}_auroc_paper']), cell(row[f'{level}_auroc_rerun']),
                      cell(row[f'{level}_auroc_minus_paper'], signed=True)]
            cells += [difference_cell(row, f'{level}_auroc_minus_test')] if both else []
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_summary(rows: List[Dict], made: Dict[str, str], results_dir: Path) -> None:
    """summary.md opens with how the numbers were made; summary.csv's rows open with it."""
    atomic_write(results_dir / 'summary.md', markdown(rows, made))
    write_csv(results_dir / 'summary.csv', made, rows)
    print(f'summary written to {results_dir / "summary.md"} and {results_dir / "summary.csv"}')


def run_study(args: argparse.Namespace) -> List[Dict]:
    """A study of mvfa/studies/studies.py: its variants' runs, then its tables and figures in <results_dir>/<study>/."""
    study = STUDIES[args.study]
    variants = study.variants(args)
    outcomes = [(variant, runs, records)
                for variant, (runs, records) in zip(variants, plan_and_run([variant.args for variant in variants]))]
    made = made_with([record for _, _, records in outcomes for record in records])
    out = args.results_dir / args.study
    rows = study.write(args.study, outcomes, made, made_with_text(made), out)
    print((out / 'summary.md').read_text(encoding='utf-8'))
    print(f'{args.study} study written to {out}')
    return rows


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    check_outputs([Output('--results_dir', args.results_dir)]
                  + ([] if args.skip_train else [Output('--ckpt_dir', args.ckpt_dir)]))
    if args.study is not None:
        return run_study(args)
    (runs, records), = plan_and_run([args])
    rows = summarise(runs, records)
    made = made_with(records)
    write_summary(rows, made, args.results_dir)
    print(markdown(rows, made))
    return rows


if __name__ == '__main__':
    raise SystemExit(run(main))
