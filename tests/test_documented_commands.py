"""Every command that README.md's code blocks and the scripts' --help texts show is one that works (issue 25):
each is parsed and its flags checked by the script's own parser, and those on BMAD data (the four scripts,
predict.py and reproduce.py's headline) run as written, at tiny size, in a folder laid out like a user's clone
with synthetic data named as the authors' seed lists name their images: the shipped lists themselves are read."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from mvfa.studies import plan as run_plan
from dataset.objects import DEFAULT_SEED_DIR, OBJECTS
from dataset.synthetic import generate
from mvfa.common.flags import FlagParser
from scans import write_dicom, write_nifti

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ('train_few', 'test_few', 'train_zero', 'test_zero', 'predict', 'reproduce', 'demo', 'bench', 'gpu_check')
# What a training command gets on top of its own flags (argparse: the last value of a flag wins).
TINY_TRAINING = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
                 '--img_size', '28', '--epoch', '1', '--batch_size', '8', '--device', 'cpu']
TRAINING = ('train_few', 'train_zero', 'reproduce')
# Run as written on the synthetic BMAD data (predict.py: on the checkpoints the commands before it trained);
# every other command (other data sets, the ViT-L benchmarks, the demo, the studies) is parsed and checked only.
RUNS_ON_BMAD = ('train_few', 'test_few', 'train_zero', 'test_zero', 'predict', 'reproduce')
HEADLINE = 'python reproduce.py --obj all --settings zero-shot few-shot --shots 4 --iterates 0'
SHIPPED_SHOT = 4


def commands_in(text: str) -> List[str]:
    """The command lines of `text`: `\\`-continued lines joined, comments dropped."""
    joined = re.sub(r'\\\n\s*', ' ', text)
    lines = (line.split(' # ')[0].split('  #')[0].strip() for line in joined.splitlines())
    return [' '.join(line.split()) for line in lines if re.match(r'(python3?|make|\.venv/bin/python) ', line)]


def readme_commands() -> List[str]:
    blocks = re.findall(r'```bash\n(.*?)```', (ROOT / 'README.md').read_text(encoding='utf-8'), re.S)
    return [command for block in blocks for command in commands_in(block)]


def help_text(script: str) -> str:
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
        importlib.import_module(script).main(['--help'])
    return shown.getvalue()


def documented_commands() -> List[Tuple[str, str]]:
    """(where, command) of every documented command, each once, README's first (in its order: training
    before the tests of what it trained)."""
    found = [('README.md', command) for command in readme_commands()]
    found += [(f'{script}.py --help', command) for script in SCRIPTS for command in commands_in(help_text(script))]
    unique = {}
    for where, command in found:
        unique.setdefault(command, where)
    return [(where, command) for command, where in unique.items()]


class Parsed(Exception):
    """Raised by the real parser once it has parsed and checked the flags: the command goes no further."""


def parse_only(monkeypatch) -> None:
    parse = FlagParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))
    monkeypatch.setattr(FlagParser, 'parse_args', parse_and_stop)


def name_as_the_shipped_lists(data: Path) -> None:
    """Rename each object's first k valid/ images (and masks) to the names of the shipped k-shot lists' line 0."""
    for obj in OBJECTS:
        lines = dict(line.split(':', 1) for line in
                     (DEFAULT_SEED_DIR / obj / f'{SHIPPED_SHOT}-shot.txt').read_text(encoding='utf-8').splitlines())
        for kind, folder in (('a-0', 'Ungood'), ('n-0', 'good')):
            split = data / f'{obj}_AD' / 'valid' / folder
            for image, name in zip(sorted((split / 'img').iterdir()), lines[kind].split()):
                for file in (image, split / 'anomaly_mask' / image.name):
                    if file.is_file():
                        file.rename(file.with_name(name))


@pytest.fixture(scope='module')
def clone(tmp_path_factory) -> Path:
    """A user's working folder: BMAD data in ./data/, a few images and the scans of "Your own scans" for predict.py."""
    folder = tmp_path_factory.mktemp('clone')
    data = generate(folder / 'data', size=32, n_test=2, n_valid=SHIPPED_SHOT, shots=(1,), iterations=1)
    shutil.rmtree(data / 'fewshot_seed')  # the commands read the shipped lists
    name_as_the_shipped_lists(data)
    for scans, split in (('my_scans', 'test'), ('scans', 'test'), ('my_normal_scans', 'valid'),
                         ('normal_scans', 'valid')):
        shutil.copytree(data / 'Brain_AD' / split / 'good' / 'img', folder / scans)
    pixels = np.random.default_rng(0).integers(-200, 400, size=(48, 20, 20))
    write_nifti(folder / 'flair.nii.gz', pixels.transpose(1, 2, 0).astype(np.float32), np.eye(4))
    (folder / 'ct_series').mkdir()
    for index in range(3):
        write_dicom(folder / 'ct_series' / f'{index}.dcm', pixels[index], position=(0.0, 0.0, 2.0 * index))
    write_dicom(folder / 'xray.dcm', pixels[0], position=None, modality='DX', intercept=0.0)
    return folder


def test_the_commands_are_found():
    commands = [command for _, command in documented_commands()]
    assert HEADLINE in commands and 'python test_few.py --obj Brain --shot 4 --iterate 0' in commands
    assert "python predict.py --checkpoint ckpt/zero-shot/Brain.pth --obj brain MRI --reference normal_scans/ " \
           "--out results/ scans/" in [' '.join(shlex.split(command)) for command in commands]
    assert len(commands) >= 30


def test_every_documented_command_works(clone, monkeypatch, capsys):
    monkeypatch.chdir(clone)
    makefile = (ROOT / 'Makefile').read_text(encoding='utf-8')
    ran = []
    for where, command in documented_commands():
        words = shlex.split(command)
        if words[0] == 'make':
            assert re.search(rf'^{words[1]}:', makefile, re.M), (where, command)
            continue
        if words[:3] == ['python3', '-m', 'venv']:
            assert (ROOT / words[words.index('-r') + 1]).is_file(), (where, command)
            continue
        assert words[0] == 'python' and (words[1].endswith('.py') or words[1] == '-m'), (where, command)
        script, argv = (words[2], words[3:]) if words[1] == '-m' else (words[1][:-len('.py')], words[2:])
        argv = argv + (TINY_TRAINING if script in TRAINING else [])
        runs = script in RUNS_ON_BMAD and '--data_path' not in argv and '--study' not in argv \
            and (script != 'reproduce' or command == HEADLINE) \
            and (script != 'predict' or Path(argv[argv.index('--checkpoint') + 1]).is_file())
        with monkeypatch.context() as patch:
            if not runs:
                parse_only(patch)
            try:
                importlib.import_module(script).main(argv)
            except Parsed as parsed:
                if script == 'reproduce' and '--data_path' not in argv and '--study' not in argv:
                    # Every run of the plan checked against the data and the seed lists, as before the first run.
                    args = parsed.args[0]
                    run_plan.check_runs(run_plan.plan(args), args)
            except SystemExit as error:  # argparse: a flag the script does not take
                pytest.fail(f'{where}: {command}: exit {error.code}\n{capsys.readouterr().err}')
        if runs:
            ran.append(command)
    assert HEADLINE in ran and len(ran) == 14 and sum(command.startswith('python predict.py') for command in ran) == 5
    summary = (clone / 'results' / 'summary.csv').read_text(encoding='utf-8')
    assert all(obj in summary for obj in OBJECTS)
    assert sorted(p.name for p in (clone / 'results' / 'few-shot').glob('*.json')) == sorted(
        f'{obj}_{SHIPPED_SHOT}shot_it0.json' for obj in OBJECTS)
    assert len(list((clone / 'vis' / 'few-shot').glob('Brain_*.png'))) == 4
    # The headline's support sets are the shipped lists' line 0.
    shipped = (DEFAULT_SEED_DIR / 'Brain' / f'{SHIPPED_SHOT}-shot.txt').read_text(encoding='utf-8').split()
    record = json.loads((clone / 'results' / 'few-shot' / f'Brain_{SHIPPED_SHOT}shot_it0.json').read_text())
    assert sorted(Path(path).name for path in record['support_images']) == sorted(
        name for name in shipped if not name.endswith(':'))
