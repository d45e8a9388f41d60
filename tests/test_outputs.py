"""Every output place checked before the work starts; a write that fails mid-run is one line that says what was
kept; files are written whole and with the mode open() gives.

Tests run as root here, and root ignores permission bits: a read-only folder is made immutable (`chattr +i`),
which root cannot write either; as another user, `chmod 555` does it.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Callable, Dict, List

import pytest

import demo
import predict
import reproduce
import test_few
import test_zero
import train_few
import train_zero
from CLIP import MultiLevelAdaptedCLIP, create_model
from dataset.synthetic import generate
from mvfa.engine import progress
from mvfa.runs import zero_shot
from mvfa.engine.checkpoint import save_adapters
from mvfa.runs.cli import run
from mvfa.common.outputs import FILE, Output, OutputError, WriteFailed, atomic_write, check_outputs, naming_command

SIZE = 28  # the smallest input the tiny CLIP (patch 14) takes
TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12', '--device', 'cpu',
        '--img_size', str(SIZE)]
# The reason the kernel gives for a write into an immutable folder (root) or a chmod 555 one (another user).
DENIED = 'Operation not permitted' if os.geteuid() == 0 else 'Permission denied'


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """Synthetic 32 px data of all six objects: 3 test and 2 valid images per class, a 1-shot list."""
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=3, n_valid=2, shots=(1,), iterations=1)


def make_writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(['chattr', '-i', str(folder)], check=True)


@pytest.fixture()
def read_only() -> Callable[[Path], Path]:
    """Makes a folder unwritable (immutable as root, which ignores permission bits); undone after the test."""
    frozen: List[Path] = []

    def freeze(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
        else:
            done = subprocess.run(['chattr', '+i', str(folder)], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f'as root a folder is made unwritable with chattr +i, which fails here: {done.stderr}')
        frozen.append(folder)
        return folder
    yield freeze
    for folder in frozen:
        make_writable(folder)


def tree(root: Path) -> Dict[str, bytes]:
    """Every file under `root` with its contents, and every folder (as b'/')."""
    return {str(path.relative_to(root)): b'/' if path.is_dir() else path.read_bytes() for path in root.rglob('*')}


def error_line(capsys) -> str:
    """The one line the run printed as its error: no traceback, no second error line."""
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('error: ') == 1, err
    return err.strip().splitlines()[-1]


def training_flags(data: Path, save: Path, few: bool = True) -> List[str]:
    few_shot_flags = ['--shot', '1', '--iterate', '0', '--fewshot_seed_dir', str(data / 'fewshot_seed')]
    return TINY + ['--data_path', str(data), '--obj', 'Liver', '--save_path', str(save), '--batch_size', '11'] + (
        few_shot_flags if few else [])


# ---------------------------------------------------------------- 1. checked before the work starts

# (script, its arguments given a data folder that does not exist and the place, the flag that names the place).
# The data folder does not exist: an output problem reported first proves it is checked before the data is read.
SCRIPTS = {
    'train_few --save_path': (train_few, lambda place: ['--data_path', 'missing', '--save_path', str(place)],
                              '--save_path'),
    'train_zero --save_path': (train_zero, lambda place: ['--data_path', 'missing', '--save_path', str(place)],
                               '--save_path'),
    'train_few --results': (train_few, lambda place: ['--data_path', 'missing', '--results', str(place / 'r.json')],
                            '--results'),
    'test_few --results': (test_few, lambda place: ['--data_path', 'missing', '--results', str(place / 'r.json')],
                           '--results'),
    'test_few --save_vis': (test_few, lambda place: ['--data_path', 'missing', '--save_vis', str(place)],
                            '--save_vis'),
    'test_zero --results': (test_zero, lambda place: ['--data_path', 'missing', '--results', str(place / 'r.json')],
                            '--results'),
    'test_zero --save_vis': (test_zero, lambda place: ['--data_path', 'missing', '--save_vis', str(place)],
                             '--save_vis'),
    'predict --out': (predict, lambda place: ['--checkpoint', 'missing.pth', '--obj', 'Brain', '--out', str(place),
                                              'missing.png'], '--out'),
    'reproduce --results_dir': (reproduce, lambda place: ['--data_path', 'missing', '--results_dir', str(place)],
                                '--results_dir'),
    'reproduce --ckpt_dir': (reproduce, lambda place: ['--data_path', 'missing', '--ckpt_dir', str(place)],
                             '--ckpt_dir'),
    'demo --out': (demo, lambda place: ['--data_path', str(place.parents[1] / 'demo-data'), '--out', str(place)],
                   '--out'),
    'demo --ckpt_path': (demo, lambda place: ['--data_path', str(place.parents[1] / 'demo-data'),
                                              '--ckpt_path', str(place)], '--ckpt_path'),
    'demo --data_path': (demo, lambda place: ['--data_path', str(place)], '--data_path'),
}


@pytest.mark.parametrize('case', SCRIPTS)
def test_an_unwritable_output_folder_is_one_line_before_the_work_starts(case, tmp_path, read_only, capsys):
    script, arguments, flag = SCRIPTS[case]
    locked = read_only(tmp_path / 'locked')
    place = locked / 'out'  # a folder to be created inside an unwritable one
    before = tree(tmp_path)
    argv = arguments(place)
    assert run(script.main, argv) == 2
    named = next(value for name, value in zip(argv, argv[1:]) if name == flag)
    assert error_line(capsys) == (f'error: {flag} {named}: cannot write in {locked} ({DENIED}): '
                                  f'give a {"file" if flag == "--results" else "folder"} you can write to')
    assert tree(tmp_path) == before  # nothing written: not the demo's data, not a folder of the place


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path, capsys):
    """--save_vis naming a file, and --results under a file: neither can be created."""
    (tmp_path / 'taken').write_text('a file')
    before = tree(tmp_path)
    assert run(test_zero.main, ['--data_path', 'missing', '--save_vis', str(tmp_path / 'taken')]) == 2
    assert error_line(capsys) == (f'error: --save_vis {tmp_path / "taken"}: {tmp_path / "taken"} is a file, not a '
                                  f'folder: give a folder you can write to')
    results = tmp_path / 'taken' / 'runs' / 'r.json'
    assert run(test_few.main, ['--data_path', 'missing', '--results', str(results)]) == 2
    assert error_line(capsys) == (f'error: --results {results}: cannot create {results}: {tmp_path / "taken"} is a '
                                  f'file: give a file you can write to')
    assert tree(tmp_path) == before


def test_the_check_creates_nothing_where_it_can_write(tmp_path):
    """A writable place passes, and the check leaves no folder or probe file behind."""
    check_outputs([Output('--out', tmp_path / 'a' / 'b'), Output('--results', tmp_path / 'c' / 'r.json', FILE),
                   Output('--save_path', tmp_path)])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match='is a folder, not a file'):
        check_outputs([Output('--results', tmp_path, FILE)])


def test_predict_creates_nothing_for_a_refused_input(data, tmp_path, capsys):
    """A corrupt input (in the second batch) is refused before the model is built: no --out folder, no heatmaps/."""
    model = MultiLevelAdaptedCLIP(create_model('tiny-clip', SIZE, None), [3, 6, 9, 12])
    save_adapters(model, tmp_path / 'Brain.pth')
    corrupt = tmp_path / 'scan.png'
    corrupt.write_bytes(b'\x89PNG not an image')
    good = sorted((data / 'Brain_AD' / 'test' / 'good' / 'img').iterdir())[0]
    out = tmp_path / 'out'
    argv = TINY + ['--checkpoint', str(tmp_path / 'Brain.pth'), '--obj', 'Brain', '--out', str(out),
                   '--batch_size', '1']
    assert run(predict.main, argv + [str(good), str(corrupt)]) == 2
    assert error_line(capsys).startswith(f'error: cannot read image {corrupt}')
    assert not out.exists()


# ---------------------------------------------------------------- 2. a write that fails mid-run

def freeze_after_epoch(monkeypatch, folder: Path, read_only, kept: Dict[str, bytes]) -> None:
    """At the end of epoch 1's training (before its curve row, scores and saves), record the folder and make it
    unwritable."""
    real_report = progress.report_epoch

    def report(epoch, losses):
        mean = real_report(epoch, losses)
        if epoch == 1:
            kept.update(tree(folder))
            read_only(folder)
        return mean
    monkeypatch.setattr(progress, 'report_epoch', report)


# What a training folder holds besides checkpoints: the resume state, the curve and its TensorBoard folder.
TRAINING_FILES = ['Liver.curve.csv', 'Liver.resume.pt', 'tensorboard', 'tensorboard/Liver']
# (script, few-shot, --selection, the checkpoint files after epoch 0, what the message says of them, where the
# resume state continues).
MID_RUN = {
    'few-shot': (train_few, True, 'test', ['Liver.json', 'Liver.pth'],
                 'the last checkpoint saved is intact at {checkpoint}', 'after epoch 0'),
    # `last` saves its checkpoint at the end only (and skips the five evaluations per epoch: a fast test). Its
    # resume state is saved within the epoch too: five batches of 11 images, one scoring point each.
    'zero-shot': (train_zero, False, 'last', [], 'no checkpoint was saved', 'at epoch 1 batch 4'),
}


@pytest.mark.parametrize('case', MID_RUN)
def test_a_write_failing_mid_run_keeps_the_last_state_and_says_how_to_resume(case, data, tmp_path, read_only,
                                                                            monkeypatch, capsys):
    script, few, selection, checkpoints, kept_words, where = MID_RUN[case]
    save = tmp_path / 'ckpt'
    results = tmp_path / 'results.json'
    argv = training_flags(data, save, few) + ['--epoch', '2', '--selection', selection, '--results', str(results)]
    kept: Dict[str, bytes] = {}
    freeze_after_epoch(monkeypatch, save, read_only, kept)
    assert run(script.main, argv) == 2
    line = error_line(capsys)
    # Epoch 1's first write fails: its curve's loss row.
    assert line == (f'error: cannot write {save / "Liver.curve.csv"} ({DENIED}); '
                    f'{kept_words.format(checkpoint=save / "Liver.pth")}; the same command with --resume continues '
                    f'{where} (from {save / "Liver.resume.pt"})')
    # The files before the failure, whole; no temporary file; no results file.
    events = [name for name in kept if name.startswith('tensorboard/Liver/events.out.tfevents.')]
    assert len(events) == 1
    assert sorted(kept) == sorted(checkpoints + TRAINING_FILES + events) and tree(save) == kept
    assert not results.exists()

    make_writable(save)
    monkeypatch.undo()
    assert run(script.main, argv + ['--resume']) == 0
    assert f'resuming from {save / "Liver.resume.pt"} {where}' in capsys.readouterr().out
    assert json.loads(results.read_text())['obj'] == 'Liver'


def test_a_results_file_failing_after_the_test_keeps_the_earlier_one(data, tmp_path, read_only, monkeypatch, capsys):
    """test_zero.py: heatmaps written, then the results folder becomes unwritable; the earlier results file stays."""
    save = tmp_path / 'ckpt'
    save_adapters(MultiLevelAdaptedCLIP(create_model('tiny-clip', SIZE, None), [3, 6, 9, 12]), save / 'Liver.pth')
    folder = tmp_path / 'results'
    results = folder / 'r.json'
    argv = TINY + ['--data_path', str(data), '--obj', 'Liver', '--save_path', str(save), '--results', str(results)]
    assert run(test_zero.main, argv) == 0
    earlier = results.read_bytes()
    real_heatmaps = zero_shot.save_evaluation_heatmaps

    def heatmaps_then_freeze(*args, **kwargs):
        written = real_heatmaps(*args, **kwargs)
        read_only(folder)
        return written
    monkeypatch.setattr(zero_shot, 'save_evaluation_heatmaps', heatmaps_then_freeze)
    assert run(test_zero.main, argv + ['--save_vis', str(tmp_path / 'vis')]) == 2
    assert error_line(capsys) == f'error: cannot write {results} ({DENIED})'
    assert tree(folder) == {'r.json': earlier}
    assert len(list((tmp_path / 'vis').iterdir())) == 6  # every test image's heatmap, whole


def test_a_script_run_in_process_names_its_command_in_a_failed_write():
    """reproduce.py and demo.py run the scripts in-process: 'the same command' of the message is named."""
    with pytest.raises(WriteFailed) as failed:
        with naming_command('python train_few.py --obj Liver'):
            raise WriteFailed(Path('Liver.pth'), 'No space left on device', ('no checkpoint was saved',))
    assert str(failed.value) == ('cannot write Liver.pth (No space left on device); no checkpoint was saved; '
                                 'the command: python train_few.py --obj Liver')


@pytest.fixture()
def full_disk(tmp_path):
    """A 64 KiB file system, filled up (a tmpfs: needs the right to mount)."""
    folder = tmp_path / 'small'
    folder.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f'a full disk is a small tmpfs, which cannot be mounted here: {mounted.stderr.strip()}')
    try:
        yield folder
    finally:
        subprocess.run(['umount', str(folder)], check=True)


def test_a_full_disk_leaves_the_earlier_file_and_no_temporary(full_disk):
    path = full_disk / 'Liver.pth'
    atomic_write(path, b'earlier')
    with pytest.raises(WriteFailed) as failed:
        atomic_write(path, bytes(128 * 1024))
    assert str(failed.value) == f'cannot write {path} (No space left on device)'
    assert tree(full_disk) == {'Liver.pth': b'earlier'}


# ---------------------------------------------------------------- 3. the mode of what is written

@pytest.mark.parametrize('umask', [0o022, 0o002])
def test_outputs_have_the_mode_open_gives(umask, data, tmp_path):
    """Checkpoint, sidecar, resume state, curve, results file and heatmaps: 0666 less the umask (0644 under 022)."""
    previous = os.umask(umask)
    try:
        save = tmp_path / 'ckpt'
        assert run(train_few.main, training_flags(data, save) + ['--epoch', '1', '--results',
                                                                 str(tmp_path / 'r.json')]) == 0
        assert run(test_few.main, training_flags(data, save) + ['--save_vis', str(tmp_path / 'vis')]) == 0
        written = [save / 'Liver.pth', save / 'Liver.json', save / 'Liver.resume.pt', save / 'Liver.curve.csv',
                   tmp_path / 'r.json', *(tmp_path / 'vis').iterdir()]
        with open(tmp_path / 'by-open', 'w'):
            pass
        expected = 0o666 & ~umask
        assert stat.S_IMODE((tmp_path / 'by-open').stat().st_mode) == expected
        assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written} == {
            path.name: oct(expected) for path in written}
    finally:
        os.umask(previous)
