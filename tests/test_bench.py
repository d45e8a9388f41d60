"""bench.py at a tiny size: both paths give the same scores and the report has every field.

Speed is not asserted: it depends on the machine and on what else runs on it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bench
from open_clip.transformer import ResidualAttentionBlock

TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
        '--img_size', '56', '--n_images', '4', '--batch_size', '3', '--shot', '1', '--device', 'cpu',
        '--threads', '1']
PATH_FIELDS = {'test_images_per_s', 'memory_bank_s', 'epoch_s', 'test_peak_mib', 'epoch_peak_mib'}


@pytest.fixture(scope='module')
def report_and_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp('bench') / 'report.json'
    return bench.main(TINY + ['--json', str(path)]), path


def test_both_paths_give_the_same_scores(report_and_file) -> None:
    report, _ = report_and_file
    assert report['scores_match'] and report['score_max_abs_diff'] < bench.SCORE_TOLERANCE


def test_report_has_every_field(report_and_file) -> None:
    report, path = report_and_file
    assert PATH_FIELDS <= set(report['reference']) and PATH_FIELDS <= set(report['ours'])
    assert {'encode_image_images_per_s', 'tokens_images_per_s'} <= set(report['ours'])
    assert set(report['ratios']) == {'test_throughput', 'epoch_speedup', 'epoch_peak_memory', 'test_peak_memory'}
    assert all(value > 0 for value in report['ratios'].values() if value is not None)
    assert isinstance(report['mvfa_overhead'], float) and isinstance(report['adapter_overhead'], float)
    assert report['train_images'] == 22 and report['n_images'] == 4 and report['device'] == 'cpu'
    assert json.loads(Path(path).read_text()) == json.loads(json.dumps(report))


def test_reference_attention_asks_for_weights_and_is_restored() -> None:
    original = ResidualAttentionBlock.attention
    block = ResidualAttentionBlock(d_model=8, n_head=2).eval()
    x = torch.rand(1, 5, 8)
    causal = torch.full((5, 5), float('-inf')).triu(1)
    with torch.no_grad():
        expected = block(x, attn_mask=causal)
        with bench.attention_weights_requested():
            assert ResidualAttentionBlock.attention is not original
            torch.testing.assert_close(block(x, attn_mask=causal), expected)
    assert ResidualAttentionBlock.attention is original


def test_too_few_images_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(['--n_images', '1'])
