"""One-call speed check on a CUDA machine: bench.py at each precision, then test_few.py and train_few.py
end to end on a synthetic Brain set the size of BrainMRI's test set; one Markdown table of every figure.

Needs nothing but the repository and its requirements: random CLIP weights (speed does not depend
on them) unless --pretrain names a weights file, synthetic data, and untrained adapters saved as
the checkpoint test_few.py reads. Generating the data is timed apart and counted in no other figure.

    python gpu_check.py --json gpu_check.json          # ViT-L-14-336 at 240 px, 2 x 1858 test images
    python gpu_check.py --device cpu --model_name tiny-clip --features_list 3 6 9 12 --img_size 56 \\
        --n_test 8 --n_images 8 --batch_size 4 --precisions fp32   # a small run, to try the script
"""
from __future__ import annotations

# Only light imports here, so that --help answers at once: torch and the project load in `main`.
import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mvfa.runs.cli import run
from mvfa.common.flags import FlagParser, parse_or_exit

REPO = Path(__file__).resolve().parent
OBJ = 'Brain'
# BrainMRI's test set has 3715 images; the synthetic set has as many of each class, 2 x 1858.
BRAIN_TEST_IMAGES_PER_CLASS = 1858
PRECISIONS = ('fp16', 'bf16', 'fp32')

# A figure of the table: a number, a verdict, or None where the platform cannot measure it.
Figure = Union[float, str, None]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__)
    p.add_argument('--device', default='cuda', help="'cuda' (or 'cuda:1'); 'cpu' to try the script without a GPU")
    p.add('model_name', help='as in the scripts, e.g. tiny-clip for a small run')
    p.add('pretrain', default='none', help="CLIP weights: 'none' (random), 'openai' or a weights file")
    p.add('features_list')
    p.add('img_size')
    p.add('n_test', default=BRAIN_TEST_IMAGES_PER_CLASS, help='synthetic test images per class (good, Ungood)')
    p.add('shot')
    p.add_argument('--precisions', nargs='+', choices=PRECISIONS, default=list(PRECISIONS),
                   help='the precisions bench.py runs at')
    p.add('n_images', default=256, help="bench.py's test images")
    p.add('batch_size', default=64, help="bench.py's inference batch")
    p.add('epochs', default=2, help="train_few.py's epochs")
    p.add('threads', help="CPU threads of bench.py's paths and of the scripts (default: torch's)")
    p.add('workers', default=os.cpu_count() or 1, help='processes generating the data')
    p.add_argument('--work_dir', type=Path, default=None,
                   help='keep the data, checkpoint and results here (default: a temporary folder, removed)')
    p.add_argument('--json', type=Path, default=None, help='also write the figures to this JSON file')
    return parse_or_exit(p, argv)


def progress(message: str) -> None:
    print(f'[gpu_check] {message}', flush=True)


# ----------------------------------------------------------------------------- data

def shard_sizes(total: int, shards: int) -> List[int]:
    """`total` split into at most `shards` near-equal positive parts."""
    shards = max(1, min(shards, total))
    return [total // shards + (index < total % shards) for index in range(shards)]


def generate_shard(out_dir: Path, seed: int, size: int, n_test: int, shot: int) -> Path:
    """One process's part of the data: shard 0 also writes the support images and seed list."""
    from dataset.synthetic import generate  # numpy and scipy: loaded where the images are drawn
    support = seed == 0
    return generate(out_dir, seed=seed, size=size, n_test=n_test, n_valid=shot if support else 1,
                    shots=(shot,) if support else (), iterations=1, objects=[OBJ])


def make_data(data_dir: Path, size: int, n_test: int, shot: int, workers: int) -> None:
    """A synthetic Brain set with `n_test` test images per class, drawn by `workers` processes.

    `generate` numbers its images from 0, so each process draws with its own seed into a folder
    of its own, and its test images join the set under names prefixed by the shard.
    """
    sizes = shard_sizes(n_test, workers)
    folders = [data_dir] + [data_dir / 'shards' / str(seed) for seed in range(1, len(sizes))]
    # Spawned, not forked: this process has loaded torch, whose threads a fork would not carry.
    with ProcessPoolExecutor(len(sizes), mp_context=multiprocessing.get_context('spawn')) as pool:
        list(pool.map(generate_shard, folders, range(len(sizes)), [size] * len(sizes), sizes, [shot] * len(sizes)))
    test_dir = data_dir / f'{OBJ}_AD' / 'test'
    for seed, folder in enumerate(folders[1:], start=1):
        shard_test = folder / f'{OBJ}_AD' / 'test'
        for image in list(shard_test.rglob('*.png')):
            image.replace(test_dir / image.parent.relative_to(shard_test) / f's{seed}-{image.name}')
    shutil.rmtree(data_dir / 'shards', ignore_errors=True)


def save_untrained_adapters(args: argparse.Namespace, path: Path) -> None:
    """The checkpoint test_few.py reads: adapters as initialised (speed does not depend on them)."""
    from CLIP import MultiLevelAdaptedCLIP, create_model
    from mvfa.engine.checkpoint import save_adapters
    clip = create_model(args.model_name, args.img_size, None, 'cpu')
    save_adapters(MultiLevelAdaptedCLIP(clip, args.features_list), path)


# ----------------------------------------------------------------------------- the checks

def model_flags(args: argparse.Namespace) -> List[str]:
    return ['--model_name', args.model_name, '--pretrain', args.pretrain, '--img_size', str(args.img_size),
            '--features_list', *map(str, args.features_list), '--device', args.device]


def run_bench(args: argparse.Namespace, precision: str) -> Dict:
    import bench
    threads = [] if args.threads is None else ['--threads', str(args.threads)]
    return bench.main(model_flags(args) + threads + ['--precision', precision, '--n_images', str(args.n_images),
                                                     '--batch_size', str(args.batch_size), '--shot', str(args.shot)])


def bench_figures(precision: str, report: Dict) -> List[Tuple[str, Figure]]:
    ref, ours, ratios = report['reference'], report['ours'], report['ratios']
    name = f'bench {precision}:'
    return [
        (f'{name} scores of both paths', f"{'match' if report['scores_match'] else 'MISMATCH'} "
                                         f"(max diff {report['score_max_abs_diff']:.2g})"),
        (f'{name} reference-style test pass, images/s', ref['test_images_per_s']),
        (f'{name} our test pass, images/s', ours['test_images_per_s']),
        (f'{name} our test pass from cached streams, images/s', ours['cached_test_images_per_s']),
        (f'{name} encode_image alone, images/s', ours['encode_image_images_per_s']),
        (f'{name} test throughput, ours / reference', ratios['test_throughput']),
        (f'{name} reference-style few-shot epoch, s', ref['epoch_s']),
        (f'{name} our few-shot epoch, s', ours['epoch_s']),
        (f'{name} epoch speed-up, reference / ours', ratios['epoch_speedup']),
        (f'{name} our peak memory, few-shot test, MiB', ours['test_peak_mib']),
        (f'{name} our peak memory, epoch, MiB', ours['epoch_peak_mib']),
    ]


def run_script(script: str, flags: List[str], threads: Optional[int]) -> float:
    """Seconds that `python <script> <flags>` took, end to end; its output goes to ours."""
    progress(f'running {script} {" ".join(flags)}')
    # OMP_NUM_THREADS, which the scripts leave to torch, reaches the helpers they start too.
    env = os.environ if threads is None else {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / script), *flags], cwd=REPO, env=env, check=True)
    return time.perf_counter() - start


def cell(value: Figure) -> str:
    if value is None:
        return 'n/a'
    return value if isinstance(value, str) else f'{value:.4g}'


def format_table(figures: List[Tuple[str, Figure]]) -> str:
    lines = ['| figure | value |', '| --- | --- |']
    lines += [f'| {name} | {cell(value)} |' for name, value in figures]
    return '\n'.join(lines)


def run_checks(args: argparse.Namespace, work_dir: Path) -> Tuple[List[Tuple[str, Figure]], Dict[str, Dict]]:
    """Every check in turn: the figures of the table, and bench.py's reports by precision."""
    data_dir, checkpoints = work_dir / 'data', work_dir / 'checkpoints'
    n_test = 2 * args.n_test
    progress(f'generating {n_test} synthetic {OBJ} test images at {args.img_size} px ({args.workers} processes)')
    start = time.perf_counter()
    make_data(data_dir, args.img_size, args.n_test, args.shot, args.workers)
    figures: List[Tuple[str, Figure]] = [(f'synthetic data, {n_test} test images (not in other figures), s',
                                          time.perf_counter() - start)]
    reports = {}
    for precision in args.precisions:
        progress(f'bench.py at {precision}')
        reports[precision] = run_bench(args, precision)
        figures += bench_figures(precision, reports[precision])

    save_untrained_adapters(args, checkpoints / f'{OBJ}.pth')
    data_flags = ['--obj', OBJ, '--shot', str(args.shot), '--data_path', str(data_dir),
                  '--fewshot_seed_dir', str(data_dir / 'fewshot_seed')] + model_flags(args)
    seconds = run_script('test_few.py', data_flags + ['--save_path', str(checkpoints)], args.threads)
    figures += [(f'test_few.py, {n_test} test images, s', seconds), ('test_few.py, test images/s', n_test / seconds)]
    seconds = run_script('train_few.py', data_flags + ['--save_path', str(work_dir / 'trained'),
                                                       '--epoch', str(args.epochs)], args.threads)
    figures.append((f'train_few.py, {args.epochs} epochs scoring {n_test} test images each, s', seconds))
    return figures, reports


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from mvfa.engine.runtime import DeviceError, pick_device
    from mvfa.engine.session import check_model_flags
    check_model_flags(args)
    try:
        pick_device(args.device)
    except DeviceError as error:
        raise DeviceError(f'{error} (--device cpu runs the checks on the CPU)') from None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as temporary:
        figures, reports = run_checks(args, args.work_dir or Path(temporary))
    figures.append(('whole run, data generation included, s', time.perf_counter() - start))
    print(format_table(figures))
    if args.json is not None:
        args.json.write_text(json.dumps({'figures': dict(figures), 'bench': reports}, indent=2), encoding='utf-8')
    # As bench.py: scores of the two paths that disagree fail the check.
    return 0 if all(report['scores_match'] for report in reports.values()) else 1


if __name__ == '__main__':
    sys.exit(run(main))
