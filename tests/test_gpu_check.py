"""gpu_check.py end to end on the CPU at a tiny size: every row of its table, with numbers, and its JSON;
the one-line refusal without CUDA; a --help that loads no torch.

Speed is not asserted: it depends on the machine and on what else runs on it.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

import gpu_check
from mvfa.runs import cli

ROOT = Path(__file__).resolve().parents[1]
N_TEST = 4
TINY = ['--device', 'cpu', '--model_name', 'tiny-clip', '--features_list', '3', '6', '9', '12', '--img_size', '56',
        '--n_test', str(N_TEST), '--shot', '1', '--n_images', '4', '--batch_size', '4', '--epochs', '1',
        '--precisions', 'fp32', '--workers', '2', '--threads', '1']
ROWS = ['synthetic data, 8 test images (not in other figures), s',
        'bench fp32: scores of both paths',
        'bench fp32: reference-style test pass, images/s',
        'bench fp32: our test pass, images/s',
        'bench fp32: our test pass from cached streams, images/s',
        'bench fp32: encode_image alone, images/s',
        'bench fp32: test throughput, ours / reference',
        'bench fp32: reference-style few-shot epoch, s',
        'bench fp32: our few-shot epoch, s',
        'bench fp32: epoch speed-up, reference / ours',
        'bench fp32: our peak memory, few-shot test, MiB',
        'bench fp32: our peak memory, epoch, MiB',
        'test_few.py, 8 test images, s',
        'test_few.py, test images/s',
        'train_few.py, 1 epochs scoring 8 test images each, s',
        'whole run, data generation included, s']


@pytest.fixture(scope='module')
def run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[int, Dict[str, str], Path, Path]:
    """(exit status, table rows by name, the JSON file, the work folder) of one tiny run."""
    folder = tmp_path_factory.mktemp('gpu_check')
    json_path, work_dir = folder / 'figures.json', folder / 'work'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = gpu_check.main(TINY + ['--json', str(json_path), '--work_dir', str(work_dir)])
    lines = printed.getvalue().splitlines()
    # bench.py prints tables of its own before: the figures are the lines after the last header.
    header = len(lines) - lines[::-1].index('| figure | value |') - 1
    rows = [line.split(' | ') for line in lines[header + 2:] if line.startswith('| ')]
    return status, {cells[0][2:]: cells[1].rstrip(' |') for cells in rows}, json_path, work_dir


def test_table_has_every_row_and_positive_numbers(run) -> None:
    status, rows, _, _ = run
    assert status == 0
    assert list(rows) == ROWS
    assert rows['bench fp32: scores of both paths'].startswith('match')
    assert all(float(value) > 0 for name, value in rows.items() if name != 'bench fp32: scores of both paths')


def test_json_holds_the_figures_and_bench_reports(run) -> None:
    _, rows, json_path, _ = run
    written = json.loads(json_path.read_text())
    assert list(written['figures']) == ROWS
    assert written['bench']['fp32']['scores_match'] and written['bench']['fp32']['device'] == 'cpu'


def test_data_has_every_test_image_with_its_mask(run) -> None:
    _, _, _, work_dir = run
    test_dir = work_dir / 'data' / 'Brain_AD' / 'test'
    normal, abnormal = (sorted(p.name for p in (test_dir / cls / 'img').glob('*.png')) for cls in ('good', 'Ungood'))
    assert len(normal) == len(abnormal) == N_TEST
    assert sorted(p.name for p in (test_dir / 'Ungood' / 'anomaly_mask').glob('*.png')) == abnormal
    assert not (work_dir / 'data' / 'shards').exists()


@pytest.mark.parametrize('total, shards, sizes', [(9, 4, [3, 2, 2, 2]), (2, 16, [1, 1]), (5, 1, [5])])
def test_shards_split_the_images_evenly(total: int, shards: int, sizes: list) -> None:
    assert gpu_check.shard_sizes(total, shards) == sizes


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_without_cuda_it_says_so_in_one_line_and_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert cli.run(gpu_check.main, []) == 2
    captured = capsys.readouterr()
    assert captured.out == '' and len(captured.err.strip().splitlines()) == 1 and 'cuda' in captured.err


def test_help_loads_no_torch() -> None:
    check = 'import sys, gpu_check; gpu_check.parse_args([]); assert "torch" not in sys.modules'
    subprocess.run([sys.executable, '-c', check], cwd=ROOT, check=True)
    shown = subprocess.run([sys.executable, 'gpu_check.py', '--help'], cwd=ROOT, check=True, capture_output=True,
                           text=True)
    assert '--device' in shown.stdout
