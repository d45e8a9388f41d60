"""One training trajectory whatever --selection is: scoring the model during training draws no random
number, so the adapters after the last step are the same with every selection mode (issue 14); and
whatever interrupts it: zero-shot training resumed within an epoch continues bit for bit (issue 20)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import train_few
import train_zero
from dataset.medical_zero import MedTrainDataset
from dataset.synthetic import generate
from mvfa.engine import session
from mvfa.engine.checkpoint import ADAPTER_KEYS, read_checkpoint
from mvfa.common.config import SELECTION_MODES
from mvfa.runs import zero_shot
from mvfa.runs.cli import run


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=2, n_valid=3, shots=(1,), iterations=1)


def final_adapters(script, argv: List[str], monkeypatch) -> Dict[str, torch.Tensor]:
    """The adapters as the last training step left them (before the selected state is restored)."""
    final = {}
    real_finish = session.finish_training

    def finish(args, setting, selection, model, *rest):
        final.update({name: tensor.clone() for name, tensor in model.state_dict().items() if 'adapters' in name})
        return real_finish(args, setting, selection, model, *rest)
    monkeypatch.setattr(session, 'finish_training', finish)
    script.main(argv)
    assert final
    return final


@pytest.mark.parametrize('script', [train_few, train_zero])
def test_every_selection_mode_trains_the_same_adapters(script, data, tmp_path, monkeypatch):
    argv = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
            '--device', 'cpu', '--img_size', '28', '--data_path', str(data), '--obj', 'Liver', '--epoch', '2',
            '--save_model', '0']
    if script is train_few:
        argv += ['--fewshot_seed_dir', str(data / 'fewshot_seed'), '--shot', '1', '--iterate', '0']
    trained = {mode: final_adapters(script, argv + ['--selection', mode, '--save_path', str(tmp_path / mode)],
                              monkeypatch) for mode in SELECTION_MODES}
    last = trained['last']
    for mode in SELECTION_MODES:
        assert set(trained[mode]) == set(last)
        for name, tensor in last.items():
            assert torch.equal(trained[mode][name], tensor), (mode, name)


# ---------------------------------------------------------------- resumed within an epoch

ZERO_SHOT_STEPS, SCORING_INTERVAL = 20, 4  # 5 objects x 4 test images at --batch_size 1; 20 // 5 scorings
INTERRUPTED_AT = (1, 10)  # epoch 1, batch 10: after its scorings at batches 0, 4 and 8


def zero_shot_argv(data: Path, save: Path) -> List[str]:
    return ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
            '--device', 'cpu', '--img_size', '28', '--data_path', str(data), '--obj', 'Liver', '--epoch', '2',
            '--save_path', str(save), '--results', str(save / 'results.json')]


@pytest.fixture(scope='module')
def zero_shot_runs(data, tmp_path_factory) -> Dict[str, object]:
    """Two epochs of zero-shot training straight, and interrupted at INTERRUPTED_AT by Ctrl-C then resumed with
    --resume; what the interrupted run printed, and the training images the resumed one decoded."""
    root = tmp_path_factory.mktemp('zero-shot')
    straight, resumed = root / 'straight', root / 'resumed'
    train_zero.main(zero_shot_argv(data, straight))
    epoch, batch = INTERRUPTED_AT
    with pytest.MonkeyPatch.context() as patch:
        real_step, steps = zero_shot.train_step, []

        def interrupted_step(*args, **kwargs):
            if len(steps) == epoch * ZERO_SHOT_STEPS + batch:
                raise KeyboardInterrupt
            steps.append(1)
            return real_step(*args, **kwargs)
        patch.setattr(zero_shot, 'train_step', interrupted_step)
        messages = io.StringIO()
        with contextlib.redirect_stderr(messages):
            assert run(train_zero.main, zero_shot_argv(data, resumed)) == 130
    with pytest.MonkeyPatch.context() as patch:
        real_item, decoded = MedTrainDataset.__getitem__, []

        def counted_item(self, index):
            decoded.append(index)
            return real_item(self, index)
        patch.setattr(MedTrainDataset, '__getitem__', counted_item)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            train_zero.main(zero_shot_argv(data, resumed) + ['--resume'])
    return {'straight': straight, 'resumed': resumed, 'interrupted_err': messages.getvalue(),
            'resumed_out': output.getvalue(), 'decoded': decoded}


def test_zero_shot_resumed_within_an_epoch_gives_the_uninterrupted_numbers(zero_shot_runs):
    straight, resumed = zero_shot_runs['straight'], zero_shot_runs['resumed']
    resume_file = resumed / 'Liver.resume.pt'
    # The last resume point before the interruption, said where it continues.
    assert zero_shot_runs['interrupted_err'].strip().splitlines()[-2] == (
        f'the same command with --resume continues at epoch 1 batch 8 (from {resume_file})')
    assert f'resuming from {resume_file} at epoch 1 batch 8' in zero_shot_runs['resumed_out']
    # Epoch 1's batches from batch 8 on, and no other training image, were read.
    assert len(zero_shot_runs['decoded']) == ZERO_SHOT_STEPS - 8
    expected, got = (json.loads((folder / 'results.json').read_text()) for folder in (straight, resumed))
    for key in ('image_auroc', 'pixel_auroc', 'selected', 'image_scores', 'labels', 'images'):
        assert got[key] == expected[key], key
    # The selected adapters, and the final ones that the last resume state holds, bit for bit.
    for name in ('Liver.pth', 'Liver.resume.pt'):
        want, have = read_checkpoint(straight / name), read_checkpoint(resumed / name)
        for key in ADAPTER_KEYS:
            assert set(have[key]) == set(want[key])
            for tensor_name, tensor in want[key].items():
                assert torch.equal(have[key][tensor_name], tensor), (name, key, tensor_name)
    # The random generators end where the uninterrupted run's do (resuming draws nothing of its own).
    want, have = (torch.load(folder / 'Liver.resume.pt', weights_only=True)['rng'] for folder in (straight, resumed))
    assert torch.equal(have['torch'], want['torch'])
    assert have['python'] == want['python'] and have['shuffler'] == want['shuffler']


def without_elapsed(path: Path) -> List[Dict[str, str]]:
    with open(path, newline='') as handle:
        return [{key: value for key, value in row.items() if key != 'elapsed_s'} for row in csv.DictReader(handle)]


def test_the_resumed_curve_is_the_uninterrupted_one(zero_shot_runs):
    """Each step once, in order: 5 scorings and a loss row per epoch, the same numbers as the straight run's."""
    straight = without_elapsed(zero_shot_runs['straight'] / 'Liver.curve.csv')
    resumed = without_elapsed(zero_shot_runs['resumed'] / 'Liver.curve.csv')
    assert resumed == straight
    per_epoch = [(str(step), 'evaluation') for step in range(0, ZERO_SHOT_STEPS, SCORING_INTERVAL)]
    assert [(row['epoch'], row['step'], row['kind']) for row in straight] == [
        (str(epoch), step, kind) for epoch in (0, 1) for step, kind in per_epoch + [(str(ZERO_SHOT_STEPS), 'loss')]]


def test_a_resume_state_of_epochs_alone_still_loads(data, zero_shot_runs, tmp_path, capsys):
    """A resume file as written before resume points within an epoch (no `within`, no `curve`) continues after its
    epoch, to the numbers of the uninterrupted run."""
    save = tmp_path / 'old'
    train_zero.main(zero_shot_argv(data, save) + ['--epoch', '1'])
    state = torch.load(save / 'Liver.resume.pt', weights_only=True)
    assert state['epoch'] == 0 and state['within'] is None
    del state['within'], state['curve']
    torch.save(state, save / 'Liver.resume.pt')
    capsys.readouterr()
    resumed = train_zero.main(zero_shot_argv(data, save) + ['--resume'])
    assert f'resuming from {save / "Liver.resume.pt"} after epoch 0' in capsys.readouterr().out
    expected = json.loads((zero_shot_runs['straight'] / 'results.json').read_text())
    assert (resumed.image_auroc, resumed.pixel_auroc) == (expected['image_auroc'], expected['pixel_auroc'])
    assert resumed.image_scores.tolist() == expected['image_scores']
    # The curve restarts at the resume point: epoch 1's rows alone.
    assert {row['epoch'] for row in without_elapsed(save / 'Liver.curve.csv')} == {'1'}
