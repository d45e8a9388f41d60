"""Every training run writes its curve, <save_path>/<Obj>.curve.csv, and (with tensorboard installed) the same
numbers as TensorBoard scalars under <save_path>/tensorboard/<Obj>/ (mvfa/engine/curve.py)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

import train_few
import train_zero
from dataset.synthetic import generate
from mvfa.engine.curve import CURVE_COLUMNS, SCALARS
from mvfa.runs import few_shot
from mvfa.runs.cli import run

TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12', '--device', 'cpu',
        '--img_size', '28']
EPOCHS = 3


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=2, n_valid=3, shots=(1,), iterations=1)


def few_shot_argv(data: Path, save: Path) -> List[str]:
    return TINY + ['--data_path', str(data), '--obj', 'Liver', '--save_path', str(save), '--shot', '1',
                   '--iterate', '0', '--fewshot_seed_dir', str(data / 'fewshot_seed'), '--epoch', str(EPOCHS),
                   '--save_model', '0', '--results', str(save / 'results.json')]


@pytest.fixture(scope='module')
def few_shot_runs(data, tmp_path_factory) -> Dict[str, object]:
    """Few-shot training with --save_model 0: straight, and interrupted in epoch 1 then resumed; the straight
    run's printed lines and its training steps per epoch, counted."""
    root = tmp_path_factory.mktemp('few-shot')
    straight, resumed = root / 'straight', root / 'resumed'
    with pytest.MonkeyPatch.context() as patch:
        real_step, steps = few_shot.train_step, []

        def counted_step(*args, **kwargs):
            steps.append(1)
            return real_step(*args, **kwargs)
        patch.setattr(few_shot, 'train_step', counted_step)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            train_few.main(few_shot_argv(data, straight))
    steps_per_epoch = len(steps) // EPOCHS
    with pytest.MonkeyPatch.context() as patch:
        calls = []

        def interrupted_step(*args, **kwargs):
            calls.append(1)
            if len(calls) > steps_per_epoch + 1:  # epoch 1's second step
                raise KeyboardInterrupt
            return real_step(*args, **kwargs)
        patch.setattr(few_shot, 'train_step', interrupted_step)
        with contextlib.redirect_stderr(io.StringIO()):
            assert run(train_few.main, few_shot_argv(data, resumed)) == 130
    train_few.main(few_shot_argv(data, resumed) + ['--resume'])
    return {'straight': straight, 'resumed': resumed, 'printed': printed.getvalue(),
            'steps_per_epoch': steps_per_epoch}


def curve(folder: Path) -> List[Dict[str, str]]:
    with open(folder / 'Liver.curve.csv', newline='') as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CURVE_COLUMNS
        return list(reader)


def tensorboard_scalars(folder: Path) -> Dict[str, List[Tuple[int, float]]]:
    """(global step, value) of each tag, as TensorBoard reads the run's event files."""
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    events = event_accumulator.EventAccumulator(str(folder / 'tensorboard' / 'Liver'))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()['scalars']}


def expected_scalars(rows: List[Dict[str, str]], steps_per_epoch: int) -> Dict[str, List[Tuple[int, float]]]:
    """The CSV's numbers as TensorBoard stores them (float32), against the global step."""
    scalars: Dict[str, List[Tuple[int, float]]] = {}
    for row in rows:
        for column, tag in SCALARS.items():
            if row[column]:
                step = int(row['epoch']) * steps_per_epoch + int(row['step'])
                scalars.setdefault(tag, []).append((step, float(np.float32(float(row[column])))))
    return scalars


def test_the_curve_holds_each_epochs_loss_and_scoring(few_shot_runs):
    folder, steps = few_shot_runs['straight'], few_shot_runs['steps_per_epoch']
    rows = curve(folder)
    assert [(row['epoch'], row['step'], row['kind']) for row in rows] == [
        (str(epoch), str(steps), kind) for epoch in range(EPOCHS) for kind in ('loss', 'evaluation')]
    # The losses are those the run printed; the kept scoring is the results file's.
    printed = re.findall(r'^epoch (\d+): loss (\S+)$', few_shot_runs['printed'], re.MULTILINE)
    assert printed == [(row['epoch'], f'{float(row["loss"]):.4f}') for row in rows if row['kind'] == 'loss']
    results = json.loads((folder / 'results.json').read_text())
    selected = next(row for row in rows if row['kind'] == 'evaluation' and f'epoch {row["epoch"]}' ==
                    results['selected'])
    assert (float(selected['image_auroc']), float(selected['pixel_auroc'])) == (
        results['image_auroc'], results['pixel_auroc'])
    elapsed = [float(row['elapsed_s']) for row in rows]
    assert 0 < elapsed[0] and elapsed == sorted(elapsed)
    # --save_model 0: the curve, no checkpoint.
    assert not (folder / 'Liver.pth').exists()


def test_tensorboard_reads_back_the_curves_numbers(few_shot_runs):
    folder = few_shot_runs['straight']
    assert tensorboard_scalars(folder) == expected_scalars(curve(folder), few_shot_runs['steps_per_epoch'])


def test_a_resumed_runs_curve_and_scalars_hold_each_step_once(few_shot_runs):
    """The rows before the resume point are kept, the rest follow; TensorBoard drops the interrupted run's."""
    straight, resumed = curve(few_shot_runs['straight']), curve(few_shot_runs['resumed'])

    def without_elapsed(rows):
        return [{key: value for key, value in row.items() if key != 'elapsed_s'} for row in rows]
    assert without_elapsed(resumed) == without_elapsed(straight)
    assert len(list((few_shot_runs['resumed'] / 'tensorboard' / 'Liver').iterdir())) == 2  # an event file a run
    assert tensorboard_scalars(few_shot_runs['resumed']) == expected_scalars(resumed, few_shot_runs['steps_per_epoch'])


@pytest.mark.parametrize('blocked, kind', [('Liver.curve.csv', 'file'), ('tensorboard/Liver', 'folder')])
def test_the_curves_places_are_checked_before_the_work_starts(blocked, kind, tmp_path, capsys):
    """A folder where the curve goes, or a file where its TensorBoard folder goes: one line, before the data (which
    does not exist) is read."""
    save = tmp_path / 'ckpt'
    place = save / blocked
    if kind == 'file':
        place.mkdir(parents=True)
    else:
        place.parent.mkdir(parents=True)
        place.write_text('in the way')
    assert run(train_zero.main, ['--data_path', str(tmp_path / 'missing'), '--save_path', str(save), '--obj',
                                 'Liver']) == 2
    other = 'folder' if kind == 'file' else 'file'
    assert capsys.readouterr().err.strip() == (f'error: --save_path {place}: {place} is a {other}, not a {kind}: '
                                               f'give a {kind} you can write to')
