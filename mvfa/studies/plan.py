"""The runs of a reproduction: which runs a set of reproduce.py flags means (`plan`), each run's script and
flags (`command`), the checks made before the first one starts (`check_runs`, `run_outputs`), and whether a
results file already holds a run (`finished`), so that the same command run again only does what is left.

Torch-free: planning and checking answer in a fraction of a second, before any run starts.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from dataset.layouts import BMAD, DataError, detect_layout
from dataset.objects import DEFAULT_SEED_DIR, seed_list_path
from dataset.validate import validate_object
from mvfa.common.errors import UserError
from mvfa.common.flags import (ALL_RUNS, DATA_PATH, FEW_SHOT_RUNS, PASS_THROUGH, TRAINING_RUNS, flag_text,
                               flag_values)
from mvfa.common.outputs import FILE, Output
from mvfa.common.sidecar import SIDECAR_FLAGS, CheckpointError
from mvfa.runs.cli import FEW_SHOT_CHECKPOINTS, ZERO_SHOT_CHECKPOINTS, script_parser
from mvfa.studies.paper_results import PAPER_NAMES

SETTINGS = ('zero-shot', 'few-shot')
ZERO_SHOT = 0  # the shot of zero-shot runs, in file names and the published numbers
# Where the authors' released checkpoints go (the test scripts' defaults); --skip_train falls back to them.
RELEASED = {'zero-shot': Path(ZERO_SHOT_CHECKPOINTS), 'few-shot': Path(FEW_SHOT_CHECKPOINTS)}
# Flags that say where and on what a run runs, not what it computes: a results file made with other values
# of these still holds the run. (Test scores do not depend on the batch size either.)
PLACEMENT = frozenset({'device', 'threads', 'resume', 'results', 'save_path', 'eval_batch_size', 'cache_streams'})
TEST_PLACEMENT = PLACEMENT | {'batch_size', 'save_vis'}


class ResultsMismatch(UserError):
    """A results file of the plan was made with other flags than the plan's run would use."""


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

    @property
    def name(self) -> str:
        """The run's file name stem: its results, log and run record are <stem>.json, .log and .run.json."""
        suffix = '' if self.normalisation == 'test' else f'_{self.normalisation}'
        return f'{self.obj}_{self.shot}shot_{self.draw}{suffix}'

    def results_path(self, results_dir: Path) -> Path:
        return results_dir / self.setting / f'{self.name}.json'

    def log_path(self, results_dir: Path) -> Path:
        """Where the local and SLURM launchers keep what the run printed (next to its results)."""
        return results_dir / self.setting / 'logs' / f'{self.name}.log'

    def trains(self, args: argparse.Namespace) -> bool:
        """Whether this run trains (else it tests a checkpoint): training runs once, for the test rule."""
        return not args.skip_train and self.normalisation == 'test'

    def script(self, args: argparse.Namespace) -> str:
        """The script that runs it: train_zero, train_few, test_zero or test_few."""
        return f"{'train' if self.trains(args) else 'test'}_{'zero' if self.setting == 'zero-shot' else 'few'}"

    def save_path(self, ckpt_dir: Path) -> Path:
        """Where this run's checkpoint goes: one per object zero-shot, one per shot and draw few-shot."""
        if self.setting == 'zero-shot':
            return ckpt_dir / self.setting
        return ckpt_dir / self.setting / f'{self.shot}shot_{self.draw}'

    def describe(self) -> str:
        return f'{self.setting} {self.obj} {self.shot}-shot {self.draw} ({self.normalisation} normalisation)'


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
    """The run's flags: its own, and those of reproduce.py's that were given and reach its script. Training
    runs take --resume, so that a run interrupted before (Ctrl-C, a time limit, a cancelled job) continues
    from its resume state; without one it starts at epoch 0."""
    argv = ['--obj', task.obj, '--save_path', str(save_path),
            '--results', str(task.results_path(args.results_dir)), '--seed', str(task.seed)]
    if task.setting == 'few-shot':
        argv += ['--shot', str(task.shot), '--iterate', str(task.iterate)]
    training = task.trains(args)
    if training:
        argv += ['--selection', args.selection, '--resume']
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


def command(task: Run, args: argparse.Namespace) -> Tuple[str, List[str]]:
    """The script that runs `task` and its flags."""
    checkpoint = existing_checkpoint(task, args) if args.skip_train else None
    return task.script(args), script_argv(task, args, checkpoint.parent if checkpoint else task.save_path(args.ckpt_dir))


def compare_flags(task: Run, args: argparse.Namespace, record: Dict) -> Tuple[bool, Optional[str]]:
    """Whether the results `record` was made by the run's script, and if so how its flags differ from those the
    run's command gives ('--epoch 2, this plan: 3'; None: no difference). A test run's model and draw flags not
    given come from the checkpoint's sidecar: not compared."""
    script, argv = command(task, args)
    parser = script_parser(script)
    flags = flag_values(parser.parse_args(argv))
    made = record.get('flags', {})
    if set(made) != set(flags):  # another script's (a training run's results, met by --skip_train)
        return False, None
    ignored = PLACEMENT if task.trains(args) else TEST_PLACEMENT | (set(SIDECAR_FLAGS) - parser.given(argv, SIDECAR_FLAGS))
    for name in sorted(set(flags) - ignored):
        if made[name] != flags[name]:
            return True, f'--{name} {flag_text(made[name])}, this plan: {flag_text(flags[name])}'
    return True, None


def finished(runs: List[Run], args: argparse.Namespace) -> List[bool]:
    """Per run whether its results file exists, made by its script with its flags. A results file of other
    flags is an error, before anything runs, as mixing it into the tables would be silent; one of another
    script (a training run's, met by --skip_train) or damaged is made again."""
    done = []
    for task in runs:
        path = task.results_path(args.results_dir)
        try:
            record = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            done.append(False)
            continue
        same_script, difference = compare_flags(task, args, record)
        if difference is not None:
            raise ResultsMismatch(f'{path} holds results of other flags ({difference}): use another --results_dir, '
                                  f'or delete the file to run it again')
        done.append(same_script)
    return done


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
    """Where the runs write: each one's results file, log folder and (training) checkpoint folder."""
    places = [Output('--results_dir', task.results_path(args.results_dir), FILE) for task in runs]
    places += [Output('--results_dir', task.log_path(args.results_dir).parent) for task in runs]
    if not args.skip_train:
        places += [Output('--ckpt_dir', task.save_path(args.ckpt_dir)) for task in runs]
    return places
