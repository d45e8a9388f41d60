"""reproduce.py's launchers on synthetic data with the tiny random CLIP: two CPU workers give the inline
launcher's numbers, the same command again runs nothing, --status says where each run stands, and bad
input is one line and exit status 2 before anything runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import reproduce
from dataset.synthetic import generate
from mvfa.studies.plan import Run

TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
        '--img_size', '56', '--epoch', '1', '--batch_size', '64', '--device', 'cpu', '--bootstrap', '0']
OBJECTS = ('Brain', 'Chest')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=3, n_valid=2, shots=(2,), iterations=1)


def flags(data, folder, *extra: str) -> list:
    return TINY + ['--data_path', str(data), '--fewshot_seed_dir', str(data / 'fewshot_seed'), '--obj', *OBJECTS,
                   '--settings', 'few-shot', '--shots', '2', '--results_dir', str(folder / 'results'),
                   '--ckpt_dir', str(folder / 'ckpt'), *extra]


def results(folder, obj: str) -> dict:
    return json.loads((folder / 'results' / 'few-shot' / f'{obj}_2shot_it0.json').read_text(encoding='utf-8'))


@pytest.fixture(scope='module')
def both(data, tmp_path_factory):
    """The same plan run inline and by the local launcher with two CPU workers."""
    inline, local = tmp_path_factory.mktemp('inline'), tmp_path_factory.mktemp('local')
    assert reproduce.run(reproduce.main, flags(data, inline)) == 0
    assert reproduce.run(reproduce.main, flags(data, local, '--launcher', 'local', '--devices', 'cpu,cpu')) == 0
    return inline, local


def test_two_cpu_workers_give_the_numbers_of_the_inline_launcher(both):
    inline, local = both
    for obj in OBJECTS:
        ours, theirs = results(local, obj), results(inline, obj)
        assert ours['image_scores'] == pytest.approx(theirs['image_scores'], abs=1e-6)
        assert ours['image_auroc'] == pytest.approx(theirs['image_auroc'], abs=1e-9)
        assert ours['flags']['threads'] == 1 and ours['cost']['device'].startswith('cpu')
        record = json.loads((local / 'results' / 'few-shot' / 'logs' / f'{obj}_2shot_it0.run.json').read_text())
        assert record['launcher'] == 'local' and record['state'] == 'done' and record['seconds'] > 0
        assert 'results written to' in (local / 'results' / 'few-shot' / 'logs' / f'{obj}_2shot_it0.log').read_text()
    # The summary is made from the results files: the same rows whichever launcher made them.
    assert (local / 'results' / 'summary.csv').read_text().count('\n') == \
        (inline / 'results' / 'summary.csv').read_text().count('\n')
    assert '| Total | 2 | cpu' in (local / 'results' / 'summary.md').read_text()


def test_the_same_command_again_runs_nothing_and_other_flags_are_refused(both, data, capsys):
    _, local = both
    stamps = {obj: os.stat(local / 'results' / 'few-shot' / f'{obj}_2shot_it0.json').st_mtime_ns for obj in OBJECTS}
    capsys.readouterr()
    assert reproduce.run(reproduce.main, flags(data, local, '--launcher', 'local', '--devices', 'cpu,cpu')) == 0
    assert '2 runs: 2 done (results found), 0 still queued, 0 to run' in capsys.readouterr().out
    assert stamps == {obj: os.stat(local / 'results' / 'few-shot' / f'{obj}_2shot_it0.json').st_mtime_ns
                      for obj in OBJECTS}
    assert reproduce.run(reproduce.main, flags(data, local, '--epoch', '2')) == 2
    error = capsys.readouterr().err
    assert 'holds results of other flags (--epoch 1, this plan: 2)' in error and error.count('\n') == 1


def test_status_lists_every_run_and_the_end_of_a_failed_ones_log(both, data, capsys):
    _, local = both
    capsys.readouterr()
    assert reproduce.run(reproduce.main, flags(data, local, '--status')) == 0
    out = capsys.readouterr().out
    assert out.count('done ') == 2 and '2 done' in out
    (local / 'results' / 'few-shot' / 'Chest_2shot_it0.json').rename(local / 'Chest.json')
    try:
        assert reproduce.run(reproduce.main, flags(data, local, '--status')) == 0
        out = capsys.readouterr().out
        assert 'failed       few-shot Chest 2-shot it0' in out and 'results written to' in out
        assert '1 failed, 1 done' in out
    finally:
        (local / 'Chest.json').rename(local / 'results' / 'few-shot' / 'Chest_2shot_it0.json')


@pytest.mark.parametrize('extra, message', [
    (['--launcher', 'local', '--devices', '7'], '--devices 7: 7 is not a device of this machine'),
    (['--launcher', 'local', '--devices', ','], '--devices \',\' names no device'),
    (['--slurm_partition', 'gpu'], '--slurm_partition is a flag of --launcher slurm, not of --launcher inline'),
    (['--launcher', 'local', '--slurm_mem', '8G'], '--slurm_mem is a flag of --launcher slurm'),
    (['--launcher', 'slurm', '--slurm_gpus_per_job', '0'], '--launcher slurm: sbatch, squeue, sinfo not found'),
])
def test_bad_launcher_input_is_one_line_and_status_2_before_anything_runs(data, tmp_path, monkeypatch, capsys,
                                                                         extra, message):
    monkeypatch.setenv('PATH', str(tmp_path / 'no-slurm-here'))
    assert reproduce.run(reproduce.main, flags(data, tmp_path, *extra)) == 2
    error = capsys.readouterr().err
    assert message in error and error.count('\n') == 1
    assert not (tmp_path / 'results').exists() and not (tmp_path / 'ckpt').exists()


def test_a_run_is_named_by_its_object_shot_and_draw():
    run = Run('few-shot', 'Liver', 4, 'rand1', -1, 112, 'reference')
    assert run.name == 'Liver_4shot_rand1_reference'
    assert str(run.log_path(Path('r'))) == 'r/few-shot/logs/Liver_4shot_rand1_reference.log'
