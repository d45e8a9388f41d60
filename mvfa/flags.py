"""The range of every numeric flag, in one place, checked as the flags are parsed: before any model
is loaded or any file written. No torch here: gpu_check.py and dataset/synthetic.py parse without it."""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Set

from mvfa.errors import UserError


class FlagError(UserError):
    """A flag's value is out of its range; the message names the flag and what it accepts."""


@dataclass(frozen=True)
class Rule:
    accepts: Callable[[float], bool]
    meaning: str  # what the flag accepts, as the message says it


POSITIVE_INTEGER = Rule(lambda value: value >= 1, 'a positive integer')
# numpy's seed is an unsigned 32-bit integer.
SEED = Rule(lambda value: 0 <= value < 2 ** 32, 'an integer from 0 to 2**32 - 1')

# By the flag's name (its `dest`): one name means one thing in every script that has it.
RULES: Dict[str, Rule] = {
    **{name: POSITIVE_INTEGER for name in (
        'batch_size', 'eval_batch_size', 'epoch', 'epochs', 'shot', 'shots', 'img_size', 'features_list',
        'n_test', 'n_valid', 'iterations', 'threads', 'workers', 'random_draws', 'repeats')},
    # 0 is a run that does not learn: the untrained adapters, scored as training would.
    'learning_rate': Rule(lambda value: value >= 0, 'a number >= 0'),
    'seed': SEED,
    'iterates': Rule(lambda value: value >= 0, 'a line of the seed lists: an integer from 0'),
    'n_images': Rule(lambda value: value >= 2, 'at least 2 (one normal and one abnormal image)'),
    # The synthetic images' side: smaller ones leave no room for a lesion.
    'size': Rule(lambda value: value >= 16, 'at least 16 (pixels)'),
}


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

    def given(self, args: Optional[Sequence[str]], names: Sequence[str]) -> Set[str]:
        """Those of the flags `names` (dests) written on the command line `args`, even at their default value."""
        unset = object()
        probe = copy.deepcopy(self)
        probe.set_defaults(**{name: unset for name in names})
        parsed = argparse.ArgumentParser.parse_args(probe, args)
        return {name for name in names if getattr(parsed, name) is not unset}


def parse_or_exit(parser: FlagParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """For scripts that do not run under mvfa.cli.run: a bad value is argparse's usage line,
    one error line and exit status 2."""
    try:
        return parser.parse_args(argv)
    except FlagError as error:
        parser.error(str(error))

