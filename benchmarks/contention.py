"""bench.py --contention: the training steps of a few-shot epoch (ours, as train_few.py runs them) under
several thread settings, alone and beside a busy process that takes one core; each setting in a fresh
interpreter, so that its OpenMP runtime reads the wait policy being measured."""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from tqdm import tqdm

from mvfa.common.threads import usable_cpus

# A busy process stops by itself after this long, should bench.py be killed before it stops it.
BUSY_LIMIT_S = 3600
BUSY_LOOP = f'end = time.monotonic() + {BUSY_LIMIT_S}\nwhile time.monotonic() < end:\n    pass'


@dataclass(frozen=True)
class Setting:
    """A thread setting: its name in the report, the thread count and the OpenMP wait policy (None: unset)."""
    name: str
    threads: int
    wait_policy: Optional[str]


def settings(cpus: int) -> List[Setting]:
    """`cpus` threads as OpenMP waits by default (spinning) and as the scripts make it wait, then one thread."""
    chosen = [Setting(f'{cpus} thread(s), OpenMP spinning (its default)', cpus, None),
              Setting(f'{cpus} thread(s), passive (the scripts)', cpus, 'PASSIVE')]
    return chosen + [Setting('1 thread, passive', 1, 'PASSIVE')] if cpus > 1 else chosen


@contextlib.contextmanager
def environment(wait_policy: Optional[str]) -> Iterator[None]:
    """os.environ with OMP_WAIT_POLICY set to `wait_policy` (removed for None), restored after."""
    saved = os.environ.get('OMP_WAIT_POLICY')
    if wait_policy is None:
        os.environ.pop('OMP_WAIT_POLICY', None)
    else:
        os.environ['OMP_WAIT_POLICY'] = wait_policy
    try:
        yield
    finally:
        os.environ.pop('OMP_WAIT_POLICY', None)
        if saved is not None:
            os.environ['OMP_WAIT_POLICY'] = saved


@contextlib.contextmanager
def busy_process(competing: bool) -> Iterator[Optional[subprocess.Popen]]:
    """With `competing`, a Python busy loop pinned to the last usable CPU, killed on exit; it ends by
    itself after BUSY_LIMIT_S should this process die first."""
    if not competing:
        yield None
        return
    pin = f'os.sched_setaffinity(0, {{{max(os.sched_getaffinity(0))}}})\n' if hasattr(os, 'sched_getaffinity') else ''
    busy = subprocess.Popen([sys.executable, '-c', f'import os, time\n{pin}{BUSY_LOOP}'])
    try:
        yield busy
    finally:
        busy.kill()
        busy.wait()


def time_training(args: argparse.Namespace, threads: int) -> Dict[bool, List[float]]:
    """Seconds of an epoch's training steps in this (fresh) process, alone (False) and beside a busy
    process (True), alternating for --repeats rounds after an epoch that warms up (first-call
    allocations and kernel selection are not measured)."""
    import torch

    from benchmarks.compare import load_model, make_workload, set_up_process, train_loader, train_ours
    from benchmarks.measure import timed
    from mvfa.engine.training import frozen_streams
    args = argparse.Namespace(**{**vars(args), 'threads': threads})
    device, _ = set_up_process(args)
    assert torch.get_num_threads() == threads
    model = load_model('ours', args, device)
    workload = make_workload(args, model.image_encoder.output_dim)
    text_features = workload.text_features.to(device)
    streams = frozen_streams(model, workload.train_images, args.batch_size)

    def epoch() -> float:
        return timed(device, lambda: train_ours(model, train_loader(streams, workload, args.seed), text_features))[1]

    epoch()
    seconds: Dict[bool, List[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for competing in (False, True):
            with busy_process(competing):
                seconds[competing].append(epoch())
    return seconds


def measure(args: argparse.Namespace) -> Dict:
    """Median seconds of each setting alone and competing, and each one's slowdown against the first
    setting alone. Alone and competing alternate within a process (on a shared machine the load drifts)."""
    cpus = usable_cpus() if args.threads is None else args.threads
    rows = []
    for setting in tqdm(settings(cpus), desc='contention', leave=False):
        with environment(setting.wait_policy), ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context('spawn')) as pool:
            seconds = pool.submit(time_training, args, setting.threads).result()
        rows += [{'setting': setting.name, 'competing': competing, 'threads': setting.threads,
                  'wait_policy': setting.wait_policy, 'seconds': seconds[competing],
                  'median_s': statistics.median(seconds[competing])} for competing in (False, True)]
    for row in rows:
        row['slowdown'] = row['median_s'] / rows[0]['median_s']
    return {'model': args.model_name, 'img_size': args.img_size, 'shot': args.shot, 'usable_cpus': cpus,
            'repeats': args.repeats, 'rows': rows}


def format_report(report: Dict) -> str:
    lines = [f"{report['model']}, {report['img_size']} px, {report['shot']}-shot: an epoch's training steps, "
             f"median of {report['repeats']} rounds (alone and beside it alternate), {report['usable_cpus']} usable CPUs",
             '', '| setting | alone, s | beside a busy process, s | slowdown beside it |', '| --- | --- | --- | --- |']
    by_case = {(row['setting'], row['competing']): row for row in report['rows']}
    for name in dict.fromkeys(row['setting'] for row in report['rows']):
        alone, competing = by_case[name, False], by_case[name, True]
        lines.append(f"| {name} | {alone['median_s']:.3g} | {competing['median_s']:.3g} | "
                     f"{competing['median_s'] / alone['median_s']:.2f}x |")
    return '\n'.join(lines)
