"""Every numeric and choice flag is checked before a model is built or a file written (issue 14)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import bench
import demo
import gpu_check
import predict
import reproduce
from mvfa.studies import reproduction
from mvfa.studies import plan as run_plan
import test_few
import test_zero
import train_few
import train_zero
from benchmarks import compare
from CLIP import factory
from dataset import synthetic
from dataset.synthetic import generate
from mvfa.runs.cli import parser, run
from mvfa.common.flags import FlagError, check

FEW_SHOT = (train_few, test_few)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=2, n_valid=2, shots=(1,), iterations=1)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory) -> Path:
    """A folder whose Liver.pth exists and is never read: the test scripts check that the checkpoint exists
    before torch is imported, and each case here must fail at its flag before the checkpoint is loaded."""
    folder = tmp_path_factory.mktemp('ckpt')
    (folder / 'Liver.pth').write_bytes(b'')
    return folder


@pytest.fixture(autouse=True)
def no_model(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError('a CLIP was built before the flags were checked')
    monkeypatch.setattr(factory, 'CLIP', refuse)


def script_flags(script, data: Path, out: Path, checkpoints: Path) -> List[str]:
    """Flags that run `script` on `data`, writing under `out`; the test scripts read `checkpoints`."""
    save_path = checkpoints if script in (test_few, test_zero) else out / 'ckpt'
    argv = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
            '--device', 'cpu', '--img_size', '28', '--data_path', str(data), '--obj', 'Liver',
            '--save_path', str(save_path), '--results', str(out / 'results.json')]
    if script in FEW_SHOT:
        argv += ['--fewshot_seed_dir', str(data / 'fewshot_seed'), '--shot', '1', '--iterate', '0']
    return argv


BAD_FLAGS = {
    # case: (script, flags, words of the message)
    'train_few batch 0': (train_few, ['--batch_size', '0'], '--batch_size must be a positive integer, got 0'),
    'train_few batch -4': (train_few, ['--batch_size', '-4'], '--batch_size must be a positive integer, got -4'),
    'test_few batch -4': (test_few, ['--batch_size', '-4'], '--batch_size must be a positive integer, got -4'),
    'train_zero batch 0': (train_zero, ['--batch_size', '0'], '--batch_size must be a positive integer'),
    'test_zero batch 0': (test_zero, ['--batch_size', '0'], '--batch_size must be a positive integer'),
    'train_zero eval batch 0': (train_zero, ['--eval_batch_size', '0'], '--eval_batch_size must be a positive'),
    'train_few eval batch 0': (train_few, ['--eval_batch_size', '0'], '--eval_batch_size must be a positive'),
    'train_few epoch 0': (train_few, ['--epoch', '0'], '--epoch must be a positive integer, got 0'),
    'train_zero epoch -1': (train_zero, ['--epoch', '-1'], '--epoch must be a positive integer, got -1'),
    'train_few learning rate -1': (train_few, ['--learning_rate', '-1'], '--learning_rate must be a number >= 0, got -1.0'),
    'train_zero learning rate -0.1': (train_zero, ['--learning_rate', '-0.1'], '--learning_rate must be a number >= 0'),
    'test_few shot 0': (test_few, ['--shot', '0'], '--shot must be a positive integer, got 0'),
    'train_few features 0': (train_few, ['--features_list', '0', '6'], '--features_list must be a positive integer'),
    'test_zero seed -1': (test_zero, ['--seed', '-1'], '--seed must be an integer from 0'),
    'test_zero image smaller than a patch': (test_zero, ['--img_size', '10'],
                                             '--img_size must be at least the patch size of tiny-clip (14 px), got 10'),
    'test_zero block beyond the model': (test_zero, ['--features_list', '3', '6', '9', '13'],
                                         'features_list [3, 6, 9, 13] must be increasing block indices within 1..12'),
    'train_few image 0': (train_few, ['--img_size', '0'], '--img_size must be a positive integer, got 0'),
    'train_few device gpu': (train_few, ['--device', 'gpu'], "unknown --device 'gpu'"),
    'test_few device gpu': (test_few, ['--device', 'gpu'], "unknown --device 'gpu'"),
    'train_zero device gpu': (train_zero, ['--device', 'gpu'], "unknown --device 'gpu'"),
    'test_zero device gpu': (test_zero, ['--device', 'gpu'], "unknown --device 'gpu'"),
}


def assert_one_error_line(capsys, words: str) -> None:
    """What the script printed to stderr is one line, `error: ...`, holding `words`."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith('error: ') and words in err, err


@pytest.mark.parametrize('case', BAD_FLAGS)
def test_a_bad_flag_is_one_line_and_exit_2_with_nothing_written(case, data, checkpoints, tmp_path, capsys):
    script, extra, words = BAD_FLAGS[case]
    assert run(script.main, script_flags(script, data, tmp_path, checkpoints) + extra) == 2
    assert_one_error_line(capsys, words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('extra, words', [
    (['--batch_size', '0'], '--batch_size must be a positive integer, got 0'),
    (['--img_size', '0'], '--img_size must be a positive integer, got 0'),
    (['--img_size', '10'], '--img_size must be at least the patch size'),
    (['--device', 'gpu'], "unknown --device 'gpu'"),
])
def test_predict_refuses_bad_flags_before_writing_its_output_folder(extra, words, data, checkpoints, tmp_path,
                                                                   capsys):
    out = tmp_path / 'out'
    argv = ['--checkpoint', str(checkpoints / 'Liver.pth'), '--obj', 'Liver', '--out', str(out),
            '--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
            '--input', str(data / 'Liver_AD' / 'test' / 'good' / 'img')]
    assert run(predict.main, argv + extra) == 2
    assert_one_error_line(capsys, words)
    assert not out.exists()


@pytest.mark.parametrize('extra, words', [
    (['--epoch', '0'], '--epoch must be a positive integer, got 0'),
    (['--random_draws', '0'], '--random_draws must be a positive integer, got 0'),
    (['--shots', '4', '0'], '--shots must be a positive integer, got 0'),
    (['--iterates', '-1'], '--iterates must be a line of the seed lists'),
    (['--batch_size', '-2'], '--batch_size must be a positive integer, got -2'),
])
def test_reproduce_refuses_bad_flags_before_any_run(extra, words, data, tmp_path, capsys):
    argv = ['--obj', 'Liver', '--data_path', str(data), '--results_dir', str(tmp_path / 'results'),
            '--ckpt_dir', str(tmp_path / 'ckpt'), '--model_name', 'tiny-clip', '--pretrain', 'none']
    assert run(reproduce.main, argv + extra) == 2
    assert_one_error_line(capsys, words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('extra, words', [
    (['--epoch', '0'], '--epoch must be a positive integer'),
    (['--size', '8'], '--size must be at least 16'),
    (['--n_test', '0'], '--n_test must be a positive integer'),
    (['--img_size', '10'], '--img_size must be at least the patch size'),
])
def test_demo_refuses_bad_flags_before_writing_data(extra, words, tmp_path, capsys):
    argv = ['--data_path', str(tmp_path / 'data'), '--ckpt_path', str(tmp_path / 'ckpt'), '--out', str(tmp_path / 'vis')]
    assert run(demo.main, argv + extra) == 2
    assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('main, argv, words', [
    (synthetic.main, ['--size', '-5'], '--size must be at least 16 (pixels), got -5'),
    (synthetic.main, ['--n_test', '0'], '--n_test must be a positive integer, got 0'),
    (bench.parse_args, ['--batch_size', '0'], '--batch_size must be a positive integer'),
    (bench.parse_args, ['--threads', '0'], '--threads must be a positive integer'),
    (gpu_check.parse_args, ['--n_test', '0'], '--n_test must be a positive integer'),
    (gpu_check.parse_args, ['--epochs', '0'], '--epochs must be a positive integer'),
    (gpu_check.parse_args, ['--workers', '0'], '--workers must be a positive integer'),
])
def test_the_tools_refuse_bad_flags_with_argparse_usage_and_exit_2(main, argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + (['--out', str(tmp_path / 'out')] if main is synthetic.main else []))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert words in err.strip().splitlines()[-1] and 'Traceback' not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('main, argv, words', [
    (bench.exit_status, ['--img_size', '10'], '--img_size must be at least the patch size of tiny-clip (14 px), got 10'),
    (bench.exit_status, ['--features_list', '3', '30'], 'features_list [3, 30] must be increasing block indices'),
    (bench.exit_status, ['--device', 'gpu'], "unknown --device 'gpu'"),
    (gpu_check.main, ['--img_size', '10'], '--img_size must be at least the patch size of tiny-clip (14 px), got 10'),
    (gpu_check.main, ['--features_list', '3', '30'], 'features_list [3, 30] must be increasing block indices'),
])
def test_the_tools_check_the_model_flags_before_measuring(main, argv, words, tmp_path, capsys, monkeypatch):
    """Catches: bench.py or gpu_check.py starting their measuring processes (or drawing data) before the
    model flags are checked, which ends in a traceback from a child process."""
    def refuse(*args, **kwargs):
        raise AssertionError('measuring started before the model flags were checked')
    monkeypatch.setattr(compare, 'in_fresh_processes', refuse)
    monkeypatch.setattr(gpu_check, 'run_checks', refuse)
    tiny = ['--model_name', 'tiny-clip', '--features_list', '3', '6', '9', '12', '--device', 'cpu']
    extra = ['--work_dir', str(tmp_path / 'work')] if main is gpu_check.main else []
    assert run(main, tiny + extra + argv) == 2
    err = capsys.readouterr().err
    assert words in err.strip().splitlines()[-1] and 'Traceback' not in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_rules_check_every_element_of_a_list_and_skip_flags_not_given():
    check({'features_list': [6, 12], 'epoch': None, 'iterate': -1, 'obj': 'Liver'})
    with pytest.raises(FlagError, match='--features_list must be a positive integer, got -3'):
        check({'features_list': [6, -3]})


def test_the_authors_defaults_pass():
    for few_shot in (False, True):
        for training in (False, True):
            parser('defaults', obj='Liver', save_path='x', few_shot=few_shot, training=training).parse_args([])


@pytest.mark.parametrize('case', ['shot larger than the support', 'object folder missing', 'checkpoint missing'])
def test_reproduce_checks_every_run_before_starting_any(case, data, tmp_path, capsys, monkeypatch):
    copy = tmp_path / 'data'
    shutil.copytree(data, copy)
    argv = ['--obj', 'Brain', 'Liver', '--data_path', str(copy), '--fewshot_seed_dir', str(copy / 'fewshot_seed'),
            '--results_dir', str(tmp_path / 'results'), '--ckpt_dir', str(tmp_path / 'ckpt'),
            '--model_name', 'tiny-clip', '--pretrain', 'none', '--shots', '1']
    words = {'shot larger than the support': '--shot 3 needs 3', 'object folder missing': 'Chest_AD does not exist',
             'checkpoint missing': '--skip_train: no checkpoint at'}[case]
    if case == 'shot larger than the support':
        argv += ['--shots', '1', '3']  # the 3-shot runs come last: the 1-shot ones must not start
    elif case == 'object folder missing':
        shutil.rmtree(copy / 'Chest_AD')  # read by zero-shot training, not a target here
    else:
        argv += ['--skip_train']
    monkeypatch.setattr(reproduce, 'SCRIPTS', {})  # any run started fails the test
    assert run(reproduce.main, argv) == 2
    assert_one_error_line(capsys, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data']


def test_reproduce_hands_the_scripts_only_the_model_flags_given():
    """So that --skip_train tests a checkpoint with the model flags of its sidecar."""
    task = run_plan.plan(reproduction.parse_args(['--obj', 'Brain', '--settings', 'zero-shot']))[0]
    plain = run_plan.script_argv(task, reproduction.parse_args(['--skip_train']), Path('ckpt'))
    assert '--img_size' not in plain and '--model_name' not in plain
    given = run_plan.script_argv(task, reproduction.parse_args(['--skip_train', '--img_size', '240']), Path('ckpt'))
    assert given[given.index('--img_size') + 1] == '240'


# Every command a user runs; `--help` of each must answer before torch is imported.
COMMANDS = ('train_few.py', 'test_few.py', 'train_zero.py', 'test_zero.py', 'predict.py', 'reproduce.py',
            'demo.py', 'bench.py', 'gpu_check.py', 'dataset/synthetic.py', 'dataset/prepare.py', 'compare.py')
# Runs a command's --help in a fresh interpreter, then reports what a test cannot see from inside this one:
# whether torch was imported, and the flags that came without a help text.
HELP_PROBE = '''
import argparse, runpy, sys
undocumented = []
print_help = argparse.ArgumentParser.print_help
def recording_print_help(parser, file=None):
    undocumented.extend(a.option_strings[0] for a in parser._actions if a.option_strings and a.help is None)
    print_help(parser, file)
argparse.ArgumentParser.print_help = recording_print_help
sys.argv = [sys.argv[1], '--help']
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit:
    pass
print('torch imported:', 'torch' in sys.modules, 'undocumented:', undocumented)
'''


@pytest.mark.parametrize('command', COMMANDS)
def test_help_shows_every_flag_with_its_default_without_importing_torch(command):
    """Catches: a module-level import that pulls in torch (--help then takes seconds), a flag added
    without help, and a parser that does not show defaults."""
    repo = Path(__file__).resolve().parent.parent
    shown = subprocess.run([sys.executable, '-c', HELP_PROBE, command], cwd=repo, capture_output=True, text=True,
                           timeout=120, check=True).stdout
    assert shown.splitlines()[-1] == 'torch imported: False undocumented: []'
    assert '(default: ' in shown


PATH_PROBE = '''
import sys
import predict, test_few, test_zero, train_few, train_zero
from mvfa.runs.cli import run
data, nowhere = sys.argv[1:]
for script, argv in ((train_few, ['--data_path', nowhere]), (train_zero, ['--data_path', nowhere]),
                     (test_few, ['--data_path', nowhere]), (test_zero, ['--data_path', data, '--save_path', nowhere]),
                     (predict, ['--checkpoint', nowhere + '/Brain.pth', '--obj', 'Brain', '--out', nowhere, data]),
                     (predict, ['--checkpoint', nowhere + '/Brain.pth', '--obj', 'Brain', '--out', nowhere, nowhere])):
    print(run(script.main, argv + ['--obj', 'Brain']), 'torch' in sys.modules)
'''


def test_data_and_checkpoint_paths_are_checked_before_torch_is_imported(tmp_path):
    """A wrong path is reported in a fraction of a second, not after the seconds torch takes to import."""
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, '-c', PATH_PROBE, str(repo / 'tests' / 'parity' / 'data'),
                           str(tmp_path / 'nowhere')], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ['2 False'] * 6, done.stderr
    errors = done.stderr.splitlines()
    assert [line.split(': ')[0] for line in errors] == ['error'] * 6
    assert all('Brain_AD does not exist' in line for line in errors[:3])
    assert all(f"no checkpoint at {tmp_path / 'nowhere' / 'Brain.pth'}" in line for line in errors[3:5])
    assert errors[5] == f"error: input {tmp_path / 'nowhere'} does not exist"


@pytest.mark.parametrize('script, obj', [(train_few, 'Liver'), (test_zero, 'Retina_RESC')])
def test_help_names_the_default_object_and_gives_an_example(script, obj, capsys):
    with pytest.raises(SystemExit):
        script.main(['--help'])
    shown = capsys.readouterr().out
    assert f'example:\n  python {Path(script.__file__).name} --obj Brain' in shown
    words = ' '.join(shown.split())  # as read, whatever the terminal's line breaks
    assert f'--obj OBJ target object: Brain, Liver, Retina_RESC, Retina_OCT2017, Chest, Histopathology, ' \
           f'or a category of --data_path (default: {obj})' in words


def test_run_keeps_an_exit_status_that_main_returns():
    """Catches: `run` answering 0 for bench.py or gpu_check.py when their scores disagree (main returns 1)."""
    assert run(lambda argv: 1) == 1
    assert run(lambda argv: {'scores_match': False}) == 0  # a script's result that is no exit status
