"""The four scripts end to end on the parity data with the tiny CLIP, and their answers to bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import test_few
import test_zero
import train_few
import train_zero
from conftest import PARITY
from mvfa.runs.cli import run


@pytest.fixture(scope='module')
def trained(tmp_path_factory, parity_args):
    """One epoch of few-shot (Brain, 2-shot) and zero-shot (target Chest) training, checkpoints saved."""
    folder = tmp_path_factory.mktemp('scripts')
    few = parity_args + ['--fewshot_seed_dir', str(PARITY / 'fewshot_seed'), '--save_path', str(folder / 'few'),
                         '--obj', 'Brain', '--shot', '2']
    zero = parity_args + ['--save_path', str(folder / 'zero'), '--obj', 'Chest']
    few_result = train_few.main(few + ['--epoch', '1', '--batch_size', '4',
                                       '--results', str(folder / 'train_few.json')])
    zero_result = train_zero.main(zero + ['--epoch', '1', '--batch_size', '8'])
    return {'folder': folder, 'few': few, 'zero': zero, 'few_result': few_result, 'zero_result': zero_result}


def test_training_saves_checkpoints_in_the_authors_format(trained):
    for name in ('few/Brain.pth', 'zero/Chest.pth'):
        checkpoint = torch.load(trained['folder'] / name, weights_only=True)
        assert sorted(checkpoint) == ['det_adapters', 'seg_adapters']
        assert sorted(checkpoint['seg_adapters']) == sorted(
            f'{level}.{fc}.0.weight' for level in range(4) for fc in ('fc1', 'fc2'))
    record = json.loads((trained['folder'] / 'train_few.json').read_text())
    assert record['obj'] == 'Brain' and record['setting'] == 'few-shot' and record['shot'] == 2
    assert record['image_auroc'] == pytest.approx(trained['few_result'].image_auroc)


def test_test_few_reproduces_the_selected_epoch(trained, capsys):
    result = test_few.main(trained['few'] + ['--batch_size', '3', '--results', str(trained['folder'] / 'few.json')])
    assert result.image_auroc == pytest.approx(trained['few_result'].image_auroc, abs=1e-9)
    assert result.pixel_auroc == pytest.approx(trained['few_result'].pixel_auroc, abs=1e-9)
    printed = capsys.readouterr().out
    assert f'Brain pAUC : {round(result.pixel_auroc, 4)}' in printed
    assert f'Brain AUC : {round(result.image_auroc, 4)}' in printed
    record = json.loads((trained['folder'] / 'few.json').read_text())
    assert record['labels'] == [0] * 5 + [1] * 5
    np.testing.assert_allclose(record['image_scores'], result.image_scores, atol=1e-7)
    assert record['pixel_auroc'] == pytest.approx(result.pixel_auroc)


def test_test_zero_reproduces_the_selected_step(trained, capsys):
    result = test_zero.main(trained['zero'] + ['--results', str(trained['folder'] / 'zero.json')])
    assert result.image_auroc == pytest.approx(trained['zero_result'].image_auroc, abs=1e-9)
    assert result.pixel_auroc is None
    assert 'Chest AUC :' in capsys.readouterr().out
    record = json.loads((trained['folder'] / 'zero.json').read_text())
    assert record['pixel_auroc'] is None and record['setting'] == 'zero-shot'


@pytest.mark.parametrize('script,extra', [(test_few, ['--shot', '2', '--obj', 'Brain']),
                                          (test_zero, ['--obj', 'Brain'])])
def test_scores_do_not_depend_on_the_batch_size(parity_args, parity_files, script, extra, tmp_path):
    shutil.copy(parity_files / 'adapters_init.pth', tmp_path / 'Brain.pth')
    seed_lists = ['--fewshot_seed_dir', str(PARITY / 'fewshot_seed')] if script is test_few else []
    flags = parity_args + extra + seed_lists + ['--save_path', str(tmp_path)]
    one, four = script.main(flags + ['--batch_size', '1']), script.main(flags + ['--batch_size', '4'])
    np.testing.assert_allclose(one.image_scores, four.image_scores, atol=1e-5)
    np.testing.assert_allclose(one.pixel_scores, four.pixel_scores, atol=1e-5)
    assert one.image_auroc == four.image_auroc and one.pixel_auroc == four.pixel_auroc


def test_the_reference_checkpoint_scores_as_the_reference(parity_args, parity_files, expected, tmp_path):
    """test_few.py on the reference's trained adapters gives the reference's AUROCs."""
    shutil.copy(parity_files / 'adapters_trained.pth', tmp_path / 'Brain.pth')
    result = test_few.main(parity_args + ['--fewshot_seed_dir', str(PARITY / 'fewshot_seed'), '--save_path',
                                          str(tmp_path), '--obj', 'Brain', '--shot', '2'])
    assert result.image_auroc == pytest.approx(float(expected['test_few_trained/Brain/image_auc']), abs=1e-6)
    assert result.pixel_auroc == pytest.approx(float(expected['test_few_trained/Brain/pixel_auc']), abs=1e-6)


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_unknown_object(parity_args, capsys, tmp_path):
    assert run(test_zero.main, parity_args + ['--obj', 'Kidney', '--save_path', str(tmp_path)]) == 2
    assert "unknown --obj 'Kidney'" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_missing_data_folder(parity_args, capsys, tmp_path):
    argv = parity_args + ['--obj', 'Brain', '--data_path', str(tmp_path / 'nowhere'), '--save_path', str(tmp_path)]
    assert run(train_zero.main, argv + ['--epoch', '1']) == 2
    line = error_line(capsys)
    assert 'does not exist' in line and '--data_path' in line
    assert list(tmp_path.iterdir()) == []


def test_missing_split_folder(parity_args, capsys, tmp_path):
    shutil.copytree(PARITY / 'data' / 'Chest_AD', tmp_path / 'Chest_AD')
    shutil.rmtree(tmp_path / 'Chest_AD' / 'test' / 'good')
    argv = parity_args + ['--obj', 'Chest', '--data_path', str(tmp_path), '--save_path', str(tmp_path / 'ckpt')]
    assert run(test_zero.main, argv) == 2
    assert 'missing folder' in error_line(capsys)
    assert not (tmp_path / 'ckpt').exists()


def test_abnormal_image_without_mask(parity_args, capsys, tmp_path):
    shutil.copytree(PARITY / 'data' / 'Brain_AD', tmp_path / 'Brain_AD')
    victim = sorted((tmp_path / 'Brain_AD' / 'test' / 'Ungood' / 'anomaly_mask').iterdir())[0]
    victim.unlink()
    argv = parity_args + ['--obj', 'Brain', '--data_path', str(tmp_path), '--save_path', str(tmp_path / 'ckpt')]
    assert run(test_zero.main, argv) == 2
    line = error_line(capsys)
    assert 'has no mask' in line and victim.name in line
    assert not (tmp_path / 'ckpt').exists()


def test_missing_checkpoint(parity_args, capsys, tmp_path):
    argv = parity_args + ['--obj', 'Brain', '--save_path', str(tmp_path)]
    assert run(test_zero.main, argv) == 2
    line = error_line(capsys)
    assert 'no checkpoint at' in line and 'Brain.pth' in line
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_does_not_fit(parity_args, parity_files, capsys, tmp_path):
    shutil.copy(parity_files / 'adapters_init.pth', tmp_path / 'Brain.pth')
    argv = parity_args[:parity_args.index('--features_list')] + ['--features_list', '3', '6', '9', '--device', 'cpu']
    assert run(test_zero.main, argv + ['--obj', 'Brain', '--save_path', str(tmp_path)]) == 2
    line = error_line(capsys)
    assert 'has 4 seg_adapters levels, the model 3' in line and '--features_list' in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ['Brain.pth']


@pytest.mark.parametrize('default_folder', [False, True])
def test_missing_seed_list_falls_back_to_a_seeded_random_draw(tmp_path, default_folder):
    """An empty seed folder, or the default one (the authors' lists have no 3-shot list)."""
    import random
    from dataset.medical_few import DEFAULT_SEED_DIR, MedDataset
    seed_dir, shot = (DEFAULT_SEED_DIR, 3) if default_folder else (tmp_path, 2)
    draws = []
    for _ in range(2):
        random.seed(5)
        with pytest.warns(UserWarning, match=str(seed_dir / 'Brain' / f'{shot}-shot.txt')):
            data = MedDataset(PARITY / 'data', 'Brain', 56, shot, 0, seed_dir)
        draws.append(data.support_images)
    assert draws[0] == draws[1] and len(draws[0]) == 2 * shot


def test_the_authors_seed_lists_are_the_default():
    """dataset/fewshot_seed holds the authors' lists, read without --fewshot_seed_dir: they name BMAD
    images, which the parity data does not have."""
    from dataset.medical_few import DEFAULT_SEED_DIR, DataError, MedDataset
    with pytest.raises(DataError, match=str(DEFAULT_SEED_DIR / 'Brain' / '4-shot.txt')):
        MedDataset(PARITY / 'data', 'Brain', 56, 4, 0)


@pytest.mark.parametrize('script,flags', [(train_few, ['--obj', 'Brain', '--shot', '2', '--fewshot_seed_dir',
                                                       str(PARITY / 'fewshot_seed')]),
                                          (train_zero, ['--obj', 'Liver'])])
def test_cached_streams_change_no_number(parity_args, script, flags, tmp_path):
    """--cache_streams scores the selection set from cached streams: same scores, same selection."""
    argv = parity_args + flags + ['--epoch', '1', '--batch_size', '8', '--img_size', '112']
    plain = script.main(argv + ['--save_path', str(tmp_path / 'plain')])
    cached = script.main(argv + ['--save_path', str(tmp_path / 'cached'), '--cache_streams'])
    np.testing.assert_allclose(cached.image_scores, plain.image_scores, atol=1e-6)
    np.testing.assert_allclose(cached.pixel_scores, plain.pixel_scores, atol=1e-6)
    for name in ('seg_adapters', 'det_adapters'):
        for key, weight in torch.load(tmp_path / 'plain' / f'{flags[1]}.pth')[name].items():
            torch.testing.assert_close(torch.load(tmp_path / 'cached' / f'{flags[1]}.pth')[name][key], weight)
