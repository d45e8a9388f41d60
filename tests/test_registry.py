"""The flag registry (mvfa/common/flags.py): each flag's roles hold wherever the flag is used (issue 19).

A model flag declared once must reach every run of reproduce.py, be compared by --resume and be
recorded in the checkpoint's sidecar, with nothing else to edit; these tests fail for a model flag
that misses any of the three.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from mvfa.studies import reproduction
from mvfa.studies import plan as run_plan
import train_few
from dataset.synthetic import generate
from mvfa.runs.cli import parser, run
from mvfa.common.flags import FLAGS, MODEL_FLAGS, PASS_THROUGH, TRAINING_FLAGS, FlagError, FlagParser
from mvfa.common.outputs import resume_path

TINY_CONFIG = Path(__file__).resolve().parents[1] / 'CLIP' / 'model_configs' / 'tiny-clip.json'
# For each model flag, a value other than the run's below that still builds a tiny CLIP: the same model
# through another spelling where the flag names the model itself. A new model flag needs one here.
OTHER_VALUE: Dict[str, List[str]] = {
    'model_name': [str(TINY_CONFIG)],
    'pretrain': ['None'],
    'img_size': ['56'],
    'features_list': ['3', '9'],
    'quick_gelu': [],
    'adaptation': ['projector'],
}


def run_flags(data: Path, save: Path) -> List[str]:
    return ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '--device', 'cpu',
            '--img_size', '28', '--data_path', str(data), '--obj', 'Liver', '--save_path', str(save),
            '--shot', '1', '--iterate', '0', '--fewshot_seed_dir', str(data / 'fewshot_seed'), '--batch_size', '22']


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Dict:
    """A one-epoch few-shot run: its flags, checkpoint sidecar and resume state."""
    data = generate(tmp_path_factory.mktemp('data'), size=32, n_test=1, n_valid=2, shots=(1,), iterations=1)
    save = tmp_path_factory.mktemp('ckpt')
    flags = run_flags(data, save)
    train_few.main(flags + ['--epoch', '1'])
    return {'flags': flags, 'save': save, 'sidecar': json.loads((save / 'Liver.json').read_text())}


def test_every_model_flag_has_another_value_here():
    assert set(OTHER_VALUE) == set(MODEL_FLAGS)


def test_model_flags_are_part_of_a_runs_identity_and_forwarded_to_every_run():
    assert set(MODEL_FLAGS) <= set(TRAINING_FLAGS)
    assert set(MODEL_FLAGS) <= {name for name, runs in PASS_THROUGH if runs == 'all'}


@pytest.mark.parametrize('name', MODEL_FLAGS)
def test_a_model_flag_is_recorded_in_the_sidecar(name, trained):
    args = parser('', obj='Liver', save_path=None, few_shot=True, training=True).parse_args(trained['flags'])
    assert trained['sidecar']['flags'][name] == getattr(args, name)


@pytest.mark.parametrize('name', MODEL_FLAGS)
def test_resume_refuses_another_value_of_a_model_flag(name, trained, capsys):
    assert resume_path(trained['save'] / 'Liver.pth').is_file()
    other = [f'--{name}', *OTHER_VALUE[name]]
    assert run(train_few.main, trained['flags'] + ['--epoch', '2', '--resume'] + other) == 2
    assert f'was made with --{name} ' in capsys.readouterr().err


@pytest.mark.parametrize('name', MODEL_FLAGS)
def test_reproduce_hands_a_given_model_flag_to_every_run(name, tmp_path):
    given = [f'--{name}', *OTHER_VALUE[name]]
    args = reproduction.parse_args(['--obj', 'Liver', '--data_path', str(tmp_path)] + given)
    for setting, train in (('zero-shot', True), ('few-shot', True), ('few-shot', False)):
        args.skip_train = not train
        task = run_plan.Run(setting, 'Liver', 4, 'it0', 0, 111)
        argv = run_plan.script_argv(task, args, tmp_path)
        at = argv.index(f'--{name}')
        assert argv[at:at + len(given)] == given, (setting, train)


def test_a_flag_added_to_the_registry_reaches_the_parser_with_its_rule():
    """The range check comes with the declaration: a declared flag added by name is checked as parsed."""
    p = FlagParser()
    p.add('shot', default=2)
    assert p.parse_args([]).shot == 2
    with pytest.raises(SystemExit):
        p.parse_args(['--shot', 'x'])
    with pytest.raises(FlagError, match='--shot must be a positive integer, got 0'):
        p.parse_args(['--shot', '0'])
    assert FLAGS['shot'].identity and not FLAGS['shot'].builds_model
