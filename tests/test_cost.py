"""Every results file records what its run cost: wall time, device, peak memory and the test evaluation's
throughput (mvfa/engine/cost.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List

import pytest

import test_few
import test_zero
import train_few
import train_zero
from dataset.synthetic import generate
from mvfa.method import scoring
from mvfa.engine.cost import cpu_model

TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12', '--device', 'cpu',
        '--img_size', '28']
COST_FIELDS = {'wall_time_s': float, 'device': str, 'peak_memory_bytes': int, 'peak_memory_of': str,
               'test_images': int, 'test_seconds': float, 'test_images_per_s': float}
# A process that has imported torch and run a model holds far more than this.
TORCH_PROCESS_BYTES = 50 * 2 ** 20
# What a test below adds to each evaluation, far more than a tiny-clip evaluation of six images takes.
EVALUATION_DELAY_S = 0.5


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """Synthetic 32 px data of all six objects: 3 test and 2 valid images per class, a 1-shot list."""
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=3, n_valid=2, shots=(1,), iterations=1)


def flags(data: Path, save: Path, results: Path, few: bool) -> List[str]:
    argv = TINY + ['--data_path', str(data), '--obj', 'Liver', '--save_path', str(save), '--results', str(results)]
    return argv + (['--shot', '1', '--iterate', '0', '--fewshot_seed_dir', str(data / 'fewshot_seed')] if few else [])


def count_test_images(data: Path, obj: str = 'Liver') -> int:
    """The object's test images, counted on disk."""
    return len(list((data / f'{obj}_AD' / 'test').glob('*/img/*')))


def assert_cost(record: dict, images: int) -> dict:
    cost = record['cost']
    assert set(cost) == set(COST_FIELDS)
    for field, kind in COST_FIELDS.items():
        assert type(cost[field]) is kind, (field, cost[field])
    assert cost['test_images'] == images == len(record['image_scores'])
    assert cost['wall_time_s'] >= cost['test_seconds'] > 0
    assert cost['test_images_per_s'] == pytest.approx(images / cost['test_seconds'])
    assert cost['peak_memory_of'] == 'host RSS' and cost['peak_memory_bytes'] > TORCH_PROCESS_BYTES
    model = cpu_model()
    assert cost['device'] == ('cpu' if model is None else f'cpu {model}')
    return cost


@pytest.mark.parametrize('few', [True, False], ids=['few-shot', 'zero-shot'])
def test_training_and_test_results_record_their_cost(few, data, tmp_path):
    train, test = (train_few, test_few) if few else (train_zero, test_zero)
    save = tmp_path / 'ckpt'
    started = time.perf_counter()
    train.main(flags(data, save, tmp_path / 'train.json', few) + ['--epoch', '1'])
    trained = assert_cost(json.loads((tmp_path / 'train.json').read_text()), count_test_images(data))
    test.main(flags(data, save, tmp_path / 'test.json', few))
    tested = assert_cost(json.loads((tmp_path / 'test.json').read_text()), count_test_images(data))
    elapsed = time.perf_counter() - started
    # Each file's wall time is its own run's: together they fit in the time both took.
    assert trained['wall_time_s'] + tested['wall_time_s'] < elapsed


def test_test_seconds_are_the_final_evaluations_alone(data, tmp_path, monkeypatch):
    """Zero-shot training scores five times an epoch (--selection test): each scoring is slowed by a known
    delay, and the file's test seconds hold one delay (the kept evaluation's), its wall time all five."""
    real_score_batch = scoring.score_batch
    scorings = []

    def slowed(*args, **kwargs):
        scorings.append(1)
        time.sleep(EVALUATION_DELAY_S)
        return real_score_batch(*args, **kwargs)
    monkeypatch.setattr(scoring, 'score_batch', slowed)
    results = tmp_path / 'r.json'
    # One batch per evaluation: the six test images at the default --eval_batch_size of 16.
    train_zero.main(flags(data, tmp_path / 'ckpt', results, False) + ['--epoch', '1'])
    cost = json.loads(results.read_text())['cost']
    assert len(scorings) == 5
    assert EVALUATION_DELAY_S <= cost['test_seconds'] < 2 * EVALUATION_DELAY_S
    assert cost['wall_time_s'] > 5 * EVALUATION_DELAY_S
