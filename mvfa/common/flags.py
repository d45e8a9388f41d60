"""The flag registry: every shared flag declared once (`FLAGS`: type, default, range, help and roles), the
lists of flags by role derived from it, and the parser that checks each range as the flags are parsed,
before any model is loaded or any file written. Add a flag here. No torch: --help answers without it."""
from __future__ import annotations

import argparse
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Set

from dataset.objects import DEFAULT_SEED_DIR, OBJECTS
from dataset.windows import AUTO, WINDOW_HELP, WINDOW_MEANING, is_window
from mvfa.common.config import (ADAPTATIONS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, NORMALISATIONS, PAPER, PRECISIONS,
                         SELECTION_MODES)
from mvfa.common.errors import UserError


class FlagError(UserError):
    """A flag's value is out of its range; the message names the flag and what it accepts."""


@dataclass(frozen=True)
class Rule:
    accepts: Callable[[float], bool]
    meaning: str  # what the flag accepts, as the message says it


POSITIVE_INTEGER = Rule(lambda value: value >= 1, 'a positive integer')
# numpy's seed is an unsigned 32-bit integer.
SEED = Rule(lambda value: 0 <= value < 2 ** 32, 'an integer from 0 to 2**32 - 1')

DATA_PATH = './data/'  # the authors' default --data_path
NORMALISATION_HELP = ("'test': min-max over the test set before fusion, as the authors (transductive: an image's "
                      "score depends on the other test images); 'reference': each image on its own, standardised "
                      "by the normal support images scored leave-one-out, as predict.py --reference (zero-shot: "
                      "the raw scores)")
# Which runs of reproduce.py a forwarded flag reaches.
ALL_RUNS, TRAINING_RUNS, FEW_SHOT_RUNS = 'all', 'training', 'few-shot'


@dataclass(frozen=True)
class Flag:
    """One flag, declared once for every script that has it: argparse's fields and its roles.

    Roles: `builds_model` (a checkpoint fits only the model built with it: the test scripts and
    predict.py take it from the sidecar), `identity` (part of a training run's identity: --resume
    refuses another value), `forwarded_to` (reproduce.py hands it, when given, to these runs),
    `summary_label` (summary.md / .csv say it under this name in "Made with"), `draw` (it names few-shot
    adapters' support set, which their test's memory bank is built from: test_few.py takes it from the sidecar).
    A script may give its own `default` and `help` where its use differs (e.g. --batch_size).
    """
    help: str
    type: Optional[Callable[[str], object]] = None
    default: object = None
    nargs: Optional[str] = None
    choices: Optional[Sequence[str]] = None
    switch: bool = False  # a store_true flag
    rule: Optional[Rule] = None
    builds_model: bool = False
    identity: bool = False
    forwarded_to: Optional[str] = None
    summary_label: Optional[str] = None
    draw: bool = False

    def arguments(self, **overrides: object) -> Dict[str, object]:
        """add_argument's keyword arguments."""
        if self.switch:
            kwargs: Dict[str, object] = {'action': 'store_true', 'help': self.help}
        else:
            default = list(self.default) if isinstance(self.default, tuple) else self.default
            kwargs = {'type': self.type, 'default': default, 'help': self.help}
            kwargs.update({key: value for key, value in (('nargs', self.nargs), ('choices', self.choices))
                           if value is not None})
        kwargs.update(overrides)
        return kwargs


def model_flag(help: str, **fields: object) -> Flag:
    """A flag that builds the model: in the run's identity and handed to every run of reproduce.py."""
    return Flag(help, builds_model=True, identity=True, forwarded_to=ALL_RUNS, **fields)


# Every flag that several commands share or that has a range, by its `dest`: one name means one thing in every
# script. The method's defaults come from PAPER; script-specific flags are declared in their scripts. The order is
# the order summaries list the flags they record.
FLAGS: Dict[str, Flag] = {
    # The model.
    'model_name': model_flag('open_clip model name, a config name in CLIP/model_configs (e.g. tiny-clip), or a '
                             'JSON path', default='ViT-L-14-336', summary_label='model'),
    'pretrain': model_flag("'openai' (CLIP/ckpt/ViT-L-14-336px.pt, else open_clip's download), a weights file, "
                           "or 'none'", default='openai', summary_label='weights'),
    'img_size': model_flag('input resolution (the paper: 240)', type=int, default=PAPER.img_size,
                           rule=POSITIVE_INTEGER, summary_label='image size'),
    'features_list': model_flag('1-based transformer blocks that get adapters', type=int, nargs='+',
                                default=PAPER.levels, rule=POSITIVE_INTEGER, summary_label='adapted blocks'),
    'quick_gelu': model_flag("QuickGELU, as OpenAI trained CLIP (the authors' numbers use exact GELU)", switch=True),
    'adaptation': model_flag("'adapter': MVFA's residual adapters; 'projector': the paper's Table 4 ablation, "
                             "projectors of the frozen stream that feed nothing back", choices=ADAPTATIONS,
                             default='adapter'),
    # Few-shot support sets.
    'shot': Flag('k abnormal + k normal support images', int, 4, rule=POSITIVE_INTEGER, identity=True, draw=True),
    'iterate': Flag('which draw of the seed list (a-<i>/n-<i>); < 0: seeded random draw', int, 0, identity=True,
                    draw=True),
    'fewshot_seed_dir': Flag('folder of <Obj>/<k>-shot.txt seed lists', Path, DEFAULT_SEED_DIR, identity=True,
                             forwarded_to=FEW_SHOT_RUNS, draw=True),
    # Training.
    'epoch': Flag('epochs', int, PAPER.epochs, rule=POSITIVE_INTEGER, forwarded_to=TRAINING_RUNS,
                  summary_label='epochs'),
    # 0 is a run that does not learn: the untrained adapters, scored as training would.
    'learning_rate': Flag('Adam learning rate', float, PAPER.few_shot_learning_rate,
                          rule=Rule(lambda value: value >= 0, 'a number >= 0'), identity=True),
    'eval_batch_size': Flag('images per inference batch for model selection (scores do not depend on it)', int, 16,
                            rule=POSITIVE_INTEGER),
    'selection': Flag("which state is kept and reported: 'test' the best on the test set (the paper), 'valid' the "
                      "best on valid/ minus the support images, 'last' the final one", choices=SELECTION_MODES,
                      default='test', identity=True),
    # What is run, on what.
    'obj': Flag(f"target object: {', '.join(OBJECTS)}, or a category of --data_path", identity=True),
    'data_path': Flag('folder holding <Obj>_AD folders, or MVTec AD or VisA', default=DATA_PATH,
                      forwarded_to=ALL_RUNS, summary_label='data'),
    'save_path': Flag('folder of the <Obj>.pth adapter checkpoints'),
    'batch_size': Flag('images per inference batch (scores do not depend on it)', int, 16, rule=POSITIVE_INTEGER,
                       identity=True, forwarded_to=ALL_RUNS),
    'results': Flag('write the scores and AUROCs to this JSON file', Path),
    'seed': Flag('seed of random, numpy and torch (reproduce.py: of the first random draw)', int, PAPER.seed,
                 rule=SEED, identity=True),
    'device': Flag('cuda, mps or cpu (default: cuda if available, else mps, else cpu)', forwarded_to=ALL_RUNS),
    'precision': Flag('autocast dtype; auto: fp16 on CUDA (as the authors), fp32 elsewhere', default='auto',
                      choices=('auto', *PRECISIONS), forwarded_to=ALL_RUNS),
    'threads': Flag("torch's CPU threads (default: OMP_NUM_THREADS or MKL_NUM_THREADS if set, else the CPUs this "
                    "process may use: its affinity and cgroup quota)", int, rule=POSITIVE_INTEGER,
                    forwarded_to=ALL_RUNS),
    # How test scores are normalised, and their intervals (mvfa/method/intervals.py, mvfa/runs/inductive.py).
    'normalisation': Flag(NORMALISATION_HELP, default='test', choices=NORMALISATIONS),
    'bootstrap': Flag('resamples of the 95 %% bootstrap intervals of the AUROCs in the --results file; 0: none', int,
                      BOOTSTRAP_RESAMPLES, forwarded_to=ALL_RUNS,
                      rule=Rule(lambda value: value == 0 or value >= 10, '0 (no intervals) or at least 10 resamples')),
    'bootstrap_seed': Flag('seed of the bootstrap: files of the same test images and seed compare paired', int,
                           BOOTSTRAP_SEED, rule=SEED, forwarded_to=ALL_RUNS),
    # Only range-checked here; each command that has them says what they count.
    **{name: Flag(help, int, rule=POSITIVE_INTEGER) for name, help in (
        ('epochs', 'epochs'), ('n_test', 'test images per class'), ('n_valid', 'valid images per class'),
        ('n_train', 'training images per category'), ('iterations', 'draws per seed list'),
        ('workers', 'worker processes'), ('random_draws', 'N seeded random draws'), ('repeats', 'repetitions'))},
    'shots': Flag('k of the k-shot support sets', int, nargs='+', rule=POSITIVE_INTEGER),
    'iterates': Flag('lines a-<i>/n-<i> of the seed lists', int, nargs='+',
                     rule=Rule(lambda value: value >= 0, 'a line of the seed lists: an integer from 0')),
    'n_images': Flag('test images', int, rule=Rule(lambda value: value >= 2, 'at least 2 (one normal and one '
                                                                             'abnormal image)')),
    # The synthetic images' side: smaller ones leave no room for a lesion.
    'size': Flag('side of the synthetic images, pixels', int, rule=Rule(lambda value: value >= 16,
                                                                         'at least 16 (pixels)')),
    # Where reproduce.py's runs run (mvfa/studies/launchers.py).
    'launcher': Flag("inline: one run after another in this process; local: one process per device of --devices; "
                     "slurm: one SLURM job per run (a job array), through submitit", default='inline',
                     choices=('inline', 'local', 'slurm')),
    'devices': Flag("--launcher local: GPU indices and 'cpu', comma-separated, one run at a time on each "
                    "('0,1,2,3'; 'cpu,cpu': two CPU workers; default: every GPU, else one CPU worker)"),
    'slurm_partition': Flag("--launcher slurm: the partition (default: the cluster's)"),
    'slurm_time': Flag('--launcher slurm: time limit of each job, minutes; a job that reaches it is requeued and '
                       'continues from its resume state', int, 24 * 60, rule=POSITIVE_INTEGER),
    'slurm_gpus_per_job': Flag('--launcher slurm: GPUs of each job (0: a CPU job)', int, 1,
                               rule=Rule(lambda value: value >= 0, 'a number of GPUs from 0')),
    'slurm_cpus_per_job': Flag('--launcher slurm: CPUs of each job (data loading)', int, 4, rule=POSITIVE_INTEGER),
    'slurm_mem': Flag("--launcher slurm: memory of each job, as sbatch's --mem (e.g. 64G; default: the "
                      "partition's)"),
    'slurm_account': Flag('--launcher slurm: the account the jobs are charged to'),
    'slurm_sbatch': Flag('--launcher slurm: more sbatch options as KEY=VALUE (KEY alone: a switch), e.g. '
                         'qos=high constraint=a100', nargs='*', default=()),
    # Scans (predict.py, dataset/prepare.py): see dataset/windows.py and dataset/volumes.py.
    'window': Flag(f'intensities of DICOM and NIfTI scans: {WINDOW_HELP}', default=AUTO,
                   rule=Rule(is_window, WINDOW_MEANING)),
    'axis': Flag('volumes are cut into slices along this axis of their canonical (RAS) orientation',
                 default='axial', choices=('axial', 'coronal', 'sagittal')),
    'frame': Flag('the volume of a 4-D NIfTI to read, from 0', int,
                  rule=Rule(lambda value: value >= 0, 'a volume of the 4-D NIfTI: an integer from 0')),
    'slices': Flag('START:STOP, the slices of each volume to score (from 0 along --axis; STOP excluded)',
                   default=':', rule=Rule(lambda value: re.fullmatch(r'\d*:\d*', value) is not None,
                                          'START:STOP, slice indices from 0 (either may be left out: 40:, :80)')),
    'min_foreground': Flag("leave out slices whose share of pixels above the intensity range's low end is below "
                           "this", float,
                           rule=Rule(lambda value: 0 <= value < 1, 'a share from 0 to below 1')),
    'valid_share': Flag('share of the volumes (at least one) that go to valid/, the few-shot support pool', float,
                        rule=Rule(lambda value: 0 < value < 1, 'a share between 0 and 1')),
}

# The roles, derived: nothing else lists flag names.
MODEL_FLAGS = tuple(name for name, flag in FLAGS.items() if flag.builds_model)
TRAINING_FLAGS = tuple(name for name, flag in FLAGS.items() if flag.identity)
DRAW_FLAGS = tuple(name for name, flag in FLAGS.items() if flag.draw)
PASS_THROUGH = tuple((name, flag.forwarded_to) for name, flag in FLAGS.items() if flag.forwarded_to)
MADE_WITH = tuple((flag.summary_label, name) for name, flag in FLAGS.items() if flag.summary_label)
RULES = {name: flag.rule for name, flag in FLAGS.items() if flag.rule is not None}


def flag_values(args: argparse.Namespace) -> Dict:
    """The flags as JSON values (a results file's and a sidecar's `flags`)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def flag_text(value: object) -> str:
    """A flag value as it is written on the command line."""
    return ' '.join(map(str, value)) if isinstance(value, list) else str(value)


def check(values: Dict[str, object]) -> None:
    """Raise FlagError for the first flag (or element of a list flag) outside its rule; None is 'not given'."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is None or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not rule.accepts(item):
                raise FlagError(f'--{name} must be {rule.meaning}, got {item}')


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with its default, written as on the command line (switches and flags
    without a default have none); the description and example keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ''
        if any(action.default is none for none in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return help_text
        # Help strings are %-formatted: a default's own '%' must be escaped.
        return f"{help_text} (default: {flag_text(action.default).replace('%', '%%')})"


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose parse_args also checks every flag against RULES (FlagError), and whose
    help shows the defaults and, given one, an example command line."""

    def __init__(self, *args: object, example: Optional[str] = None, **kwargs: object) -> None:
        kwargs.setdefault('formatter_class', HelpWithDefaults)
        if example is not None:
            kwargs.setdefault('epilog', f'example:\n  {example}')
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                   namespace: Optional[argparse.Namespace] = None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        check(vars(parsed))
        return parsed

    def add(self, name: str, **overrides: object) -> None:
        """Add the declared flag `name` (see FLAGS), with this script's own default or help if given."""
        self.add_argument(f'--{name}', **FLAGS[name].arguments(**overrides))

    def given(self, args: Optional[Sequence[str]], names: Sequence[str]) -> Set[str]:
        """Those of the flags `names` (dests) written on the command line `args`, even at their default value."""
        unset = object()
        probe = copy.deepcopy(self)
        probe.set_defaults(**{name: unset for name in names})
        parsed = argparse.ArgumentParser.parse_args(probe, args)
        return {name for name in names if getattr(parsed, name) is not unset}


def parse_or_exit(parser: FlagParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """For scripts that do not run under mvfa.runs.cli.run: a bad value is argparse's usage line,
    one error line and exit status 2."""
    try:
        return parser.parse_args(argv)
    except FlagError as error:
        parser.error(str(error))

