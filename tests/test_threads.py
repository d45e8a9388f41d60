"""The CPU thread count the scripts choose (affinity, cgroup quota, the user's variables, --threads), and
the OpenMP wait policy they put in the environment before torch loads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_zero
from mvfa.runs.cli import parser
from mvfa.engine.session import Session
from mvfa.common.threads import USER_THREAD_VARIABLES, cgroup_cpus, chosen_threads, usable_cpus

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model_name', 'tiny-clip', '--features_list', '3', '6', '9', '12', '--img_size', '56', '--device', 'cpu',
        '--pretrain', 'none']


def cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    path = tmp_path / 'cpu.max'
    path.write_text(cpu_max + '\n')
    return path


@pytest.mark.parametrize('cpu_max, cpus', [('max 100000', None), ('200000 100000', 2), ('150000 100000', 1),
                                           ('50000 100000', 1), ('800000 200000', 4)])
def test_cgroup_v2_quota_gives_whole_cpus(tmp_path, cpu_max, cpus) -> None:
    absent = tmp_path / 'absent'
    assert cgroup_cpus(cgroup_v2(tmp_path, cpu_max), absent, absent) == cpus


@pytest.mark.parametrize('quota, cpus', [('-1', None), ('300000', 3)])
def test_cgroup_v1_quota_and_period(tmp_path, quota, cpus) -> None:
    (tmp_path / 'quota').write_text(quota + '\n')
    (tmp_path / 'period').write_text('100000\n')
    assert cgroup_cpus(tmp_path / 'absent', tmp_path / 'quota', tmp_path / 'period') == cpus


def test_no_cgroup_files_is_no_quota(tmp_path) -> None:
    assert cgroup_cpus(tmp_path / 'a', tmp_path / 'b', tmp_path / 'c') is None


def test_usable_cpus_is_the_fewer_of_affinity_and_quota(tmp_path) -> None:
    quota = cgroup_cpus(cgroup_v2(tmp_path, '200000 100000'), tmp_path / 'a', tmp_path / 'b')
    assert usable_cpus({0, 1, 2, 3, 4, 5}, quota) == 2
    assert usable_cpus({3}, quota) == 1
    assert usable_cpus({0, 1, 2}, None) == 3
    assert usable_cpus(quota_cpus=None) == len(os.sched_getaffinity(0))


def test_threads_flag_wins_and_the_users_variables_are_kept() -> None:
    assert chosen_threads(3, {'OMP_NUM_THREADS': '1'}) == 3
    for name in USER_THREAD_VARIABLES:
        assert chosen_threads(None, {name: '5'}) is None  # torch reads it itself
    assert chosen_threads(None, {'OMP_NUM_THREADS': ''}) == usable_cpus(quota_cpus=cgroup_cpus())


@pytest.fixture()
def torch_threads():
    """The test process's thread count, restored after a session changed it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def session_threads(argv: list) -> int:
    arguments = parser(test_zero.__doc__, obj='Brain', save_path='unused', few_shot=False, training=False)
    Session(arguments.parse_args(TINY + argv))
    return torch.get_num_threads()


def test_a_session_applies_threads(torch_threads, monkeypatch) -> None:
    """--threads, then (without it, OMP_NUM_THREADS unset) the usable CPUs: what a script's run computes with."""
    for name in USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert session_threads(['--threads', '3']) == 3
    assert session_threads(['--threads', '1']) == 1
    assert session_threads([]) == usable_cpus(quota_cpus=cgroup_cpus())


def test_a_session_keeps_the_users_omp_num_threads(torch_threads, monkeypatch) -> None:
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    torch.set_num_threads(3)  # as if torch had read another value: the session leaves it alone
    assert session_threads([]) == 3


IMPORT_AND_REPORT = ("import importlib, os, sys; importlib.import_module(sys.argv[1]); "
                     "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")


@pytest.mark.parametrize('script', ['train_few', 'train_zero', 'test_few', 'test_zero', 'predict', 'reproduce',
                                    'bench', 'demo', 'gpu_check'])
def test_scripts_set_the_wait_policy_before_importing_torch(script) -> None:
    """Catches: the policy set after torch (and its OpenMP) loaded, where it has no effect, or not at all."""
    env = {key: value for key, value in os.environ.items() if key != 'OMP_WAIT_POLICY'}
    out = subprocess.run([sys.executable, '-c', IMPORT_AND_REPORT, script], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ['PASSIVE', 'False']


def test_the_users_wait_policy_is_kept() -> None:
    out = subprocess.run([sys.executable, '-c', IMPORT_AND_REPORT, 'train_few'], cwd=ROOT, check=True, text=True,
                         env={**os.environ, 'OMP_WAIT_POLICY': 'ACTIVE'}, capture_output=True).stdout.split()
    assert out == ['ACTIVE', 'False']


def test_a_session_from_flags_recorded_before_threads_existed(torch_threads, monkeypatch) -> None:
    """mvfa.studies.figures rebuilds a session from a results file's flags; older files have no 'threads'."""
    for name in USER_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    args = parser(test_zero.__doc__, obj='Brain', save_path='unused', few_shot=False, training=False).parse_args(TINY)
    del args.threads
    Session(args)
    assert torch.get_num_threads() == usable_cpus(quota_cpus=cgroup_cpus())
