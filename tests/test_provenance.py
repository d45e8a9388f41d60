"""Outputs and checkpoints that say how they were made (issue 14): results files name their images,
support images, selection, device and precision; the test scripts and predict.py build the model a
checkpoint's sidecar names and refuse a flag that contradicts it; training keeps an earlier checkpoint."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import pytest

import predict
import test_few
import test_zero
import train_few
import train_zero
from dataset.synthetic import generate
from mvfa.runs.cli import parser
from mvfa.runs.cli import run

# Not the scripts' defaults, so a test run that builds the model from them fails.
MODEL = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '9', '--img_size', '28']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=2, n_valid=2, shots=(1,), iterations=1)


def data_flags(data: Path, few_shot: bool) -> List[str]:
    argv = ['--device', 'cpu', '--data_path', str(data), '--obj', 'Liver']
    return argv + (['--fewshot_seed_dir', str(data / 'fewshot_seed'), '--shot', '1', '--iterate', '0']
                   if few_shot else [])


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> Path:
    """Few-shot and zero-shot adapters of Liver under <folder>/few-shot and <folder>/zero-shot, with results."""
    folder = tmp_path_factory.mktemp('trained')
    for script, setting in ((train_few, 'few-shot'), (train_zero, 'zero-shot')):
        script.main(MODEL + data_flags(data, script is train_few) + [
            '--epoch', '1', '--save_path', str(folder / setting), '--results', str(folder / f'{setting}.json')])
    return folder


def test_training_results_name_images_support_selection_device_and_precision(trained, data):
    record = json.loads((trained / 'few-shot.json').read_text())
    assert len(record['images']) == len(record['image_scores']) == len(record['labels']) == 4
    assert all(Path(path).is_file() and '/test/' in path for path in record['images'])
    assert len(record['support_images']) == 2 and all('/valid/' in path for path in record['support_images'])
    assert record['selection'] == 'test' and record['selected'] == 'epoch 0'
    assert record['device'] == 'cpu' and record['precision'] == 'fp32'
    zero = json.loads((trained / 'zero-shot.json').read_text())
    assert len(zero['images']) == len(zero['image_scores']) and zero['support_images'] is None


@pytest.mark.parametrize('script, setting', [(test_few, 'few-shot'), (test_zero, 'zero-shot')])
def test_a_test_run_takes_the_model_flags_and_selection_from_the_sidecar(script, setting, trained, data, tmp_path):
    results = tmp_path / 'results.json'
    checkpoint = trained / setting / 'Liver.pth'
    script.main(data_flags(data, script is test_few) + ['--save_path', str(checkpoint.parent), '--results', str(results),
                                                         '--img_size', '28'])  # given and agreeing: fine
    record = json.loads(results.read_text())
    sidecar = json.loads(checkpoint.with_suffix('.json').read_text())
    assert record['selection'] == sidecar['selection'] == 'test' and record['selected'] == sidecar['step']
    assert record['checkpoint'] == str(checkpoint) and record['device'] == 'cpu'
    assert record['flags']['features_list'] == [3, 9] and record['flags']['model_name'] == 'tiny-clip'
    assert record['image_auroc'] == pytest.approx(json.loads((trained / f'{setting}.json').read_text())['image_auroc'])


@pytest.mark.parametrize('flag, value, words', [
    ('--features_list', ['3', '6', '9', '12'], '--features_list 3 9, this run has --features_list 3 6 9 12'),
    ('--img_size', ['56'], '--img_size 28, this run has --img_size 56'),
    ('--model_name', ['ViT-B-16'], '--model_name tiny-clip, this run has --model_name ViT-B-16'),
    ('--pretrain', ['openai'], '--pretrain none, this run has --pretrain openai'),
    ('--quick_gelu', [], '--quick_gelu False, this run has --quick_gelu True'),
    ('--adaptation', ['projector'], '--adaptation adapter, this run has --adaptation projector'),
    ('--shot', ['2'], '--shot 1, this run has --shot 2'),
    ('--iterate', ['1'], '--iterate 0, this run has --iterate 1'),
])
def test_a_model_flag_that_contradicts_the_sidecar_is_refused(flag, value, words, trained, data, capsys):
    argv = data_flags(data, True) + ['--save_path', str(trained / 'few-shot'), flag, *value]
    assert run(test_few.main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'was trained with ' + words in err, err


def test_test_few_takes_the_support_draw_from_the_sidecar(trained, data, tmp_path, capsys):
    """Trained with --shot 1 --iterate 0 on the synthetic seed lists: left out, they are the sidecar's, not the
    defaults (--shot 4 on dataset/fewshot_seed/), so the test builds the memory bank the training scored with."""
    results = tmp_path / 'results.json'
    test_few.main(['--device', 'cpu', '--data_path', str(data), '--obj', 'Liver', '--save_path', str(trained / 'few-shot'),
                   '--results', str(results)])
    record, training = json.loads(results.read_text()), json.loads((trained / 'few-shot.json').read_text())
    assert record['shot'] == 1 and record['flags']['iterate'] == 0
    assert record['flags']['fewshot_seed_dir'] == str(data / 'fewshot_seed')
    assert record['support_images'] == training['support_images'] and len(record['support_images']) == 2
    assert record['image_auroc'] == pytest.approx(training['image_auroc'])
    argv = data_flags(data, True) + ['--save_path', str(trained / 'few-shot'), '--fewshot_seed_dir', 'dataset/fewshot_seed']
    assert run(test_few.main, argv) == 2
    assert (f"was trained with --fewshot_seed_dir {data / 'fewshot_seed'}, this run has --fewshot_seed_dir "
            f"dataset/fewshot_seed: leave the flag out") in capsys.readouterr().err


def test_a_random_draw_takes_its_seed_from_the_sidecar(trained, data, tmp_path, capsys):
    """A random draw (--iterate -1) is named by the seed: taken from the sidecar, and refused when it differs."""
    shutil.copy(trained / 'few-shot' / 'Liver.pth', tmp_path / 'Liver.pth')
    sidecar = json.loads((trained / 'few-shot' / 'Liver.json').read_text())
    sidecar['flags'].update(iterate=-1, seed=5)
    (tmp_path / 'Liver.json').write_text(json.dumps(sidecar))
    argv = ['--device', 'cpu', '--data_path', str(data), '--obj', 'Liver', '--save_path', str(tmp_path)]
    test_few.main(argv + ['--results', str(tmp_path / 'results.json')])
    flags = json.loads((tmp_path / 'results.json').read_text())['flags']
    assert flags['seed'] == 5 and flags['iterate'] == -1 and flags['shot'] == 1
    assert run(test_few.main, argv + ['--seed', '6']) == 2
    assert 'was trained with --seed 5, this run has --seed 6' in capsys.readouterr().err


def test_a_seed_list_draw_does_not_depend_on_the_seed(trained, data, tmp_path):
    """From a seed list the draw is the list's line whatever the seed: another --seed is no contradiction."""
    argv = data_flags(data, True) + ['--save_path', str(trained / 'few-shot'), '--seed', '7']
    assert test_few.main(argv + ['--results', str(tmp_path / 'r.json')]) is not None
    assert json.loads((tmp_path / 'r.json').read_text())['flags']['seed'] == 7


def test_test_zero_refuses_few_shot_adapters(trained, data, capsys, tmp_path):
    """Few-shot adapters saw abnormal images of their object: scored by test_zero.py they would be a leaked number."""
    argv = data_flags(data, False) + ['--save_path', str(trained / 'few-shot'), '--results', str(tmp_path / 'r.json')]
    assert run(test_zero.main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'holds few-shot adapters' in err and 'test_zero.py needs' in err
    assert not (tmp_path / 'r.json').exists()


def test_predict_reads_the_sidecar_too(trained, data, tmp_path, capsys):
    images = str(data / 'Liver_AD' / 'test' / 'good' / 'img')
    argv = [images, '--checkpoint', str(trained / 'zero-shot' / 'Liver.pth'), '--obj', 'Liver', '--device', 'cpu']
    assert run(predict.main, argv + ['--out', str(tmp_path / 'bad'), '--features_list', '6']) == 2
    assert 'was trained with --features_list 3 9, this run has --features_list 6' in capsys.readouterr().err
    assert not (tmp_path / 'bad').exists()
    rows = predict.main(argv + ['--out', str(tmp_path / 'out')])
    assert len(rows) == 2


def test_normal_only_refuses_few_shot_adapters(trained, data, capsys):
    argv = data_flags(data, True) + ['--save_path', str(trained / 'few-shot'), '--normal_only']
    assert run(test_few.main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'holds few-shot adapters' in err and '--normal_only needs' in err


def test_a_checkpoint_without_sidecar_uses_the_flags_as_before(trained, data, tmp_path):
    """The authors' released checkpoints have no sidecar: the model flags must be given, selection is unknown."""
    shutil.copy(trained / 'zero-shot' / 'Liver.pth', tmp_path / 'Liver.pth')
    results = tmp_path / 'results.json'
    test_zero.main(MODEL + data_flags(data, False) + ['--save_path', str(tmp_path), '--results', str(results)])
    record = json.loads(results.read_text())
    assert record['selection'] is None and record['selected'] is None and record['checkpoint'] == str(tmp_path / 'Liver.pth')
    few_shot = tmp_path / 'few-shot'
    few_shot.mkdir()
    shutil.copy(trained / 'few-shot' / 'Liver.pth', few_shot / 'Liver.pth')
    test_few.main(MODEL + data_flags(data, True) + ['--save_path', str(few_shot), '--results', str(results)])
    assert json.loads(results.read_text())['image_auroc'] == pytest.approx(
        json.loads((trained / 'few-shot.json').read_text())['image_auroc'])


def test_a_new_training_run_keeps_the_earlier_checkpoint(data, tmp_path, capsys):
    argv = MODEL + data_flags(data, True) + ['--epoch', '1', '--save_path', str(tmp_path)]
    train_few.main(argv + ['--seed', '1'])
    first = (tmp_path / 'Liver.pth').read_bytes()
    capsys.readouterr()
    train_few.main(argv + ['--seed', '2'])
    assert f"{tmp_path / 'Liver.pth'} holds an earlier run's adapters: kept as {tmp_path / 'Liver.previous.pth'}" \
        in capsys.readouterr().out
    assert (tmp_path / 'Liver.previous.pth').read_bytes() == first
    assert json.loads((tmp_path / 'Liver.previous.json').read_text())['flags']['seed'] == 1
    assert json.loads((tmp_path / 'Liver.json').read_text())['flags']['seed'] == 2


def test_given_flags_are_those_on_the_command_line_even_at_their_default():
    p = parser('given', obj='Liver', save_path='x', few_shot=True, training=False)
    names = ('img_size', 'quick_gelu', 'shot', 'model_name')
    assert p.given(['--img_size', '240', '--quick_gelu', '--shot', '4'], names) == {'img_size', 'quick_gelu', 'shot'}
    assert p.given([], names) == set()


def test_predict_takes_its_inputs_anywhere_on_the_line(trained, data, tmp_path, capsys):
    images = str(data / 'Liver_AD' / 'test' / 'good' / 'img')
    argv = ['--checkpoint', str(trained / 'zero-shot' / 'Liver.pth'), '--obj', 'Liver', '--device', 'cpu']
    after_dashes = predict.main(argv + ['--out', str(tmp_path / 'a'), '--features_list', '3', '9', '--', images])
    with_flag = predict.main(argv + ['--input', images, '--out', str(tmp_path / 'b'), '--features_list', '3', '9'])
    assert [row['score'] for row in after_dashes] == [row['score'] for row in with_flag] and len(with_flag) == 2
    assert run(predict.main, argv + ['--out', str(tmp_path / 'c')]) == 2
    assert 'no images to score' in capsys.readouterr().err and not (tmp_path / 'c').exists()


def test_a_warning_is_one_plain_line(trained, data, tmp_path, capsys):
    """A warning reads `warning: ...`, without the source path and line of Python's warnings format."""
    argv = data_flags(data, False) + ['--save_path', str(trained / 'zero-shot'), '--normal_only', '--shot', '1',
                                      '--fewshot_seed_dir', str(tmp_path)]
    assert run(test_few.main, argv) == 0
    err = capsys.readouterr().err.splitlines()
    expected = (f"warning: no few-shot seed list {tmp_path / 'Liver' / '1-shot.txt'}: drawing the 1-shot support "
                f"images at random (seeded)")
    assert expected in err and not any('.py:' in line or 'warnings.warn' in line for line in err), err
