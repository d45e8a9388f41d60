"""What bench.py measures once its flags are parsed: the reference-style path and ours, each phase in a
fresh process, and the report comparing them. bench.py's docstring says what each path is."""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from benchmarks.measure import batched_throughput, peak_above_start, timed
from benchmarks.reference import (Scores, reference_evaluate, reference_memory_bank, reference_style,
                                  reference_train)
from CLIP import MultiLevelAdaptedCLIP, create_model
from loss import MVFALoss
from mvfa.common.config import PAPER
from mvfa.engine.evaluation import evaluate
from mvfa.method.memory_bank import MemoryBank, build_memory_bank
from mvfa.engine.runtime import configure_backends, pick_device, resolve_precision
from mvfa.common.threads import chosen_threads
from mvfa.engine.training import AdapterOptimizers, EpochLosses, cache_streams, frozen_streams, train_step
from utils import AUGMENTED_COPIES, augment, setup_seed

# Scores of the two paths may differ by float rounding only: the parity tolerance in fp32; in fp16 or
# bf16 the two paths round differently (other batches, other kernels), as two fp16 runs of the authors' would.
SCORE_TOLERANCE = {'fp32': 1e-4, 'fp16': 1e-2, 'bf16': 1e-1}
# Target of the MVFA overhead over plain CLIP image encoding (`encode_image`), as a fraction, for the
# paper's model: on a smaller one the memory-bank search weighs more against the blocks.
OVERHEAD_TARGET, OVERHEAD_TARGET_MODEL = 0.15, 'ViT-L-14-336'
# The few-shot training batch of train_few.py (and of the authors).
TRAIN_BATCH_SIZE = 1
PATHS = ('reference', 'ours')
# What every measuring process imports and takes longest to (`fresh_process_context`).
PRELOADED_LIBRARIES = ('torch', 'open_clip', 'sklearn.metrics', 'kornia')
PHASES = ('test', 'epoch')

# A memory bank: ours, or the reference's raw tokens per level.
Bank = Union[MemoryBank, List[Tensor]]


# ----------------------------------------------------------------------------- workload

@dataclass
class Workload:
    """Synthetic images in [0, 1] with square anomalies: the augmented support set and a test set."""
    train_images: Tensor
    train_masks: Tensor
    train_labels: Tensor
    normal: Tensor
    test_images: Tensor
    test_labels: Tensor
    test_masks: Tensor
    text_features: Tensor


def square_masks(count: int, size: int) -> Tensor:
    masks = torch.zeros(count, 1, size, size)
    masks[:, :, size // 4:size // 2, size // 4:size // 2] = 1.0
    return masks


def make_workload(args: argparse.Namespace, embed_dim: int) -> Workload:
    generator = torch.Generator().manual_seed(args.seed)
    size = args.img_size
    abnormal, abnormal_masks = augment(torch.rand(args.shot, 3, size, size, generator=generator),
                                       square_masks(args.shot, size))
    normal, normal_masks = augment(torch.rand(args.shot, 3, size, size, generator=generator))
    n_normal = args.n_images // 2
    test_labels = torch.cat([torch.zeros(n_normal), torch.ones(args.n_images - n_normal)]).long()
    test_masks = square_masks(args.n_images, size) * test_labels[:, None, None, None]
    # Text features only enter a few small products: random unit columns cost what the prompt
    # ensemble's do, without running the text tower over 420 sentences in each process.
    text_features = torch.nn.functional.normalize(torch.randn(embed_dim, 2, generator=generator), dim=0)
    return Workload(train_images=torch.cat([abnormal, normal]), train_masks=torch.cat([abnormal_masks, normal_masks]),
                    train_labels=torch.cat([torch.ones(len(abnormal)), torch.zeros(len(normal))]), normal=normal,
                    test_images=torch.rand(args.n_images, 3, size, size, generator=generator),
                    test_labels=test_labels, test_masks=test_masks, text_features=text_features)


def train_loader(inputs: Tensor, workload: Workload, seed: int) -> DataLoader:
    """The augmented support set (images, or their streams), shuffled in the same order for both paths."""
    return DataLoader(TensorDataset(inputs, workload.train_masks, workload.train_labels),
                      batch_size=TRAIN_BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_loader(workload: Workload, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(workload.test_images, workload.test_labels, workload.test_masks),
                      batch_size=batch_size)


def set_up_process(args: argparse.Namespace) -> Tuple[torch.device, str]:
    """The device and resolved precision of a measuring process, with the process-wide settings a
    run of the scripts has (`configure_backends`: threads, CPU malloc reuse, no TF32 in fp32)."""
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    configure_backends(device, precision, args.threads)
    return device, precision


def load_model(path: str, args: argparse.Namespace, device: torch.device) -> MultiLevelAdaptedCLIP:
    """The model as `path` runs it, with the same weights in every process (random ones come from
    the seeded generator). The reference runs open_clip's own blocks on fp32 weights, every one of
    them requiring grad as in the authors' scripts; ours fused attention at `--precision`."""
    setup_seed(args.seed)
    pretrained = None if args.pretrain.lower() == 'none' else args.pretrain
    model = MultiLevelAdaptedCLIP(create_model(args.model_name, args.img_size, pretrained, 'cpu'),
                                  args.features_list, fused_attention=path == 'ours').to(device)
    if path == 'reference':
        return model.requires_grad_(True)
    return model.set_precision(resolve_precision(args.precision, device))


# ----------------------------------------------------------------------------- the two paths

def memory_bank(path: str, model: MultiLevelAdaptedCLIP, normal: Tensor, batch_size: int,
                from_streams: bool = False) -> Bank:
    """The memory bank from the augmented normal support images (ours also from their streams)."""
    if path == 'reference':
        return reference_memory_bank(model, normal)
    return build_memory_bank(model, normal, batch_size, from_streams)


def score_test_set(path: str, model: MultiLevelAdaptedCLIP, workload: Workload, bank: Bank,
                   loader: DataLoader) -> Scores:
    """The few-shot test of the test set against `bank`; ours from `loader` (images or cached streams)."""
    if path == 'reference':
        return reference_evaluate(model, workload.test_images, workload.test_labels, workload.test_masks,
                                  workload.text_features, bank)
    result = evaluate(model, loader, workload.text_features.to(model.device), True, bank, progress=False)
    return result.image_scores, result.pixel_scores


def train_ours(model: MultiLevelAdaptedCLIP, loader: DataLoader, text_features: Tensor) -> Tuple[float, int]:
    """One epoch of training steps from the streams, as train_few.py runs it; its losses read once."""
    optimizers = AdapterOptimizers(model, PAPER.few_shot_learning_rate)
    loss_fn = MVFALoss(model.config)
    losses = EpochLosses()
    for streams, masks, labels in loader:
        losses.add(train_step(model, optimizers, loss_fn, streams, labels, masks, text_features, from_streams=True))
    return losses.summary()


def epoch(path: str, model: MultiLevelAdaptedCLIP, workload: Workload, args: argparse.Namespace) -> Dict[str, float]:
    """Seconds of one few-shot epoch as train_few.py runs it, by part: training steps, memory bank, test.

    Ours starts the training steps and the memory bank from the support images' `frozen_stream`s,
    which train_few.py computes once per run: `setup`, timed apart (the reference has none).
    """
    device = model.device
    seconds: Dict[str, float] = {}

    def part(name: str, work: Callable[[], object]) -> object:
        result, seconds[name] = timed(device, work)
        return result

    text_features = workload.text_features.to(device)
    if path == 'ours':
        streams = part('setup', lambda: frozen_streams(model, workload.train_images, args.batch_size))
        part('train', lambda: train_ours(model, train_loader(streams, workload, args.seed), text_features))
        # The augmented normal images close the training set.
        bank = part('bank', lambda: memory_bank(path, model, streams[len(streams) - len(workload.normal):],
                                                args.batch_size, from_streams=True))
    else:
        part('train', lambda: reference_train(model, train_loader(workload.train_images, workload, args.seed),
                                              text_features, PAPER.few_shot_learning_rate))
        bank = part('bank', lambda: memory_bank(path, model, workload.normal, args.batch_size))
    part('test', lambda: score_test_set(path, model, workload, bank, test_loader(workload, args.batch_size)))
    seconds['epoch'] = seconds['train'] + seconds['bank'] + seconds['test']
    return seconds


def encode_image(model: MultiLevelAdaptedCLIP, images: Tensor) -> Tensor:
    """CLIP's image embedding through the same blocks as MVFA's tokens, without adapters: open_clip's
    own forward is the same function, but under CPU autocast its attention copies the in-projection
    weights once per token position (ViT-L in bf16: 40 s for 8 images)."""
    depth = len(model.image_encoder.transformer.resblocks)
    return model.pooled_embedding(model.run_blocks(model.input_stream(images), 0, depth))


def measure(path: str, phase: str, args: argparse.Namespace) -> Dict:
    """Time `phase` of `path` ('reference' or 'ours') in a fresh process: 'test', the few-shot test
    (memory bank, then the test pass), or 'epoch'."""
    device, precision = set_up_process(args)
    model = load_model(path, args, device)
    workload = make_workload(args, model.image_encoder.output_dim)
    reference = path == 'reference'
    # The reference runs under autocast throughout, as the authors' loops did; ours autocasts inside.
    with reference_style(device, precision) if reference else contextlib.nullcontext():
        # Warm-up at the measured batch size: first-call allocations and kernel selection are not measured.
        forward = model if reference else model.adapter_tokens
        with torch.no_grad(), model.autocast():
            forward(workload.test_images[:1 if reference else args.batch_size].to(device))
        if phase == 'epoch':
            seconds, peak_mib = peak_above_start(device, lambda: epoch(path, model, workload, args))
            return {**{f'{name}_s': value for name, value in seconds.items()}, 'epoch_peak_mib': peak_mib}

        def few_shot_test() -> Tuple[Bank, float, Scores, float]:
            bank, bank_seconds = timed(device, lambda: memory_bank(path, model, workload.normal, args.batch_size))
            scores, test_seconds = timed(device, lambda: score_test_set(path, model, workload, bank,
                                                                        test_loader(workload, args.batch_size)))
            return bank, bank_seconds, scores, test_seconds

        (bank, bank_seconds, scores, test_seconds), peak_mib = peak_above_start(device, few_shot_test)
    result = {'image_scores': scores[0], 'pixel_scores': scores[1], 'test_images_per_s': args.n_images / test_seconds,
              'memory_bank_s': bank_seconds, 'test_peak_mib': peak_mib}
    if not reference:
        # Model selection with --cache_streams scores the test set from its streams, cached once per run.
        streams = cache_streams(model, test_loader(workload, args.batch_size))
        cached_scores, cached_seconds = timed(device, lambda: score_test_set(path, model, workload, bank, streams))
        result.update({'cached_image_scores': cached_scores[0], 'cached_pixel_scores': cached_scores[1],
                       'cached_test_images_per_s': args.n_images / cached_seconds})
        result['encode_image_images_per_s'] = batched_throughput(model, lambda images: encode_image(model, images),
                                                                 workload.test_images, args.batch_size)
        result['tokens_images_per_s'] = batched_throughput(model, model.adapter_tokens, workload.test_images,
                                                           args.batch_size)
    return result


def fresh_process_context() -> multiprocessing.context.BaseContext:
    """Where each measuring process comes from: forked from a server that imported the heavy
    libraries once (a fresh interpreter spends seconds on them) and has run nothing else, so no
    thread pool, CUDA context or memory of a measurement is inherited; spawned where there is no
    fork server (Windows). The preloads are installed libraries, found from any working folder."""
    if 'forkserver' not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context('spawn')
    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload(list(PRELOADED_LIBRARIES))
    return context


def in_fresh_processes(path: str, args: argparse.Namespace, bar: Optional[tqdm] = None) -> Dict:
    """Every phase of `path`, each in a process of its own; `bar` says which runs and counts it done."""
    result = {}
    for phase in PHASES:
        if bar is not None:
            bar.set_postfix_str(f'{path} path, {phase}')
        with ProcessPoolExecutor(max_workers=1, mp_context=fresh_process_context()) as pool:
            result.update(pool.submit(measure, path, phase, args).result())
        if bar is not None:
            bar.update()
    return result


# ----------------------------------------------------------------------------- report

def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    return None if numerator is None or denominator is None or denominator == 0 else numerator / denominator


def build_report(args: argparse.Namespace, reference: Dict, ours: Dict) -> Dict:
    precision = resolve_precision(args.precision, pick_device(args.device))
    score_diff = max(float(np.abs(reference[key] - ours[prefix + key]).max())
                     for key in ('image_scores', 'pixel_scores') for prefix in ('', 'cached_'))
    timings = {path: {key: value for key, value in result.items() if not key.endswith('_scores')}
               for path, result in (('reference', reference), ('ours', ours))}
    return {
        'model': args.model_name, 'pretrain': args.pretrain, 'device': str(pick_device(args.device)),
        'torch_threads': chosen_threads(args.threads) or torch.get_num_threads(), 'img_size': args.img_size,
        'features': args.features_list,
        'n_images': args.n_images, 'batch_size': args.batch_size, 'shot': args.shot,
        'train_images': 2 * AUGMENTED_COPIES * args.shot,
        'precision': precision, 'score_max_abs_diff': score_diff,
        'scores_match': score_diff < SCORE_TOLERANCE[precision], **timings,
        'ratios': {
            'test_throughput': ratio(ours['test_images_per_s'], reference['test_images_per_s']),
            'epoch_speedup': ratio(reference['epoch_s'], ours['epoch_s']),
            'epoch_peak_memory': ratio(ours['epoch_peak_mib'], reference['epoch_peak_mib']),
            'test_peak_memory': ratio(ours['test_peak_mib'], reference['test_peak_mib']),
        },
        # How much slower MVFA's test pass (tokens, bank search, maps) is than encode_image alone.
        'mvfa_overhead': ratio(ours['encode_image_images_per_s'], ours['test_images_per_s']) - 1.0,
        'adapter_overhead': ratio(ours['encode_image_images_per_s'], ours['tokens_images_per_s']) - 1.0,
    }


def format_report(report: Dict) -> str:
    ref, ours, ratios = report['reference'], report['ours'], report['ratios']

    def mib(value: Optional[float]) -> str:
        return 'n/a' if value is None else f'{value:.0f} MiB'

    def times(value: Optional[float]) -> str:
        return 'n/a' if value is None else f'{value:.2f}x'

    def seconds(name: str, key: str) -> Tuple[str, str, str, str]:
        return (name, f"{ref.get(key, 0.0):.3g}", f"{ours.get(key, 0.0):.3g}",
                times(ratio(ref.get(key), ours.get(key))))

    rows = [
        ('test pass, images/s', f"{ref['test_images_per_s']:.3f}", f"{ours['test_images_per_s']:.3f}",
         times(ratios['test_throughput'])),
        ('test pass from cached streams (--cache_streams), images/s', 'n/a', f"{ours['cached_test_images_per_s']:.3f}",
         times(ratio(ours['cached_test_images_per_s'], ref['test_images_per_s']))),
        seconds('memory bank from the images, s', 'memory_bank_s'),
        seconds(f"epoch: {report['train_images']} training steps, s", 'train_s'),
        seconds('epoch: memory bank, s', 'bank_s'),
        seconds(f"epoch: test of {report['n_images']} images, s", 'test_s'),
        seconds('few-shot epoch, s', 'epoch_s'),
        seconds('once per run: streams of the support images, s', 'setup_s'),
        ('peak memory, epoch', mib(ref['epoch_peak_mib']), mib(ours['epoch_peak_mib']),
         times(ratios['epoch_peak_memory'])),
        ('peak memory, few-shot test (bank and test pass)', mib(ref['test_peak_mib']), mib(ours['test_peak_mib']),
         times(ratios['test_peak_memory'])),
    ]
    lines = [f"{report['model']} ({report['pretrain']} weights), {report['img_size']} px, features "
             f"{report['features']}, device {report['device']} ({report['torch_threads']} threads, "
             f"{report['precision']}), "
             f"{report['n_images']} test images, batch {report['batch_size']}, {report['shot']}-shot "
             f"({report['train_images']} training images)",
             f"scores: max abs diff {report['score_max_abs_diff']:.2e} "
             f"({'match' if report['scores_match'] else 'MISMATCH'}, tolerance "
             f"{SCORE_TOLERANCE[report['precision']]:g} in {report['precision']})",
             '', '| | reference-style | ours | ours vs reference |', '| --- | --- | --- | --- |']
    lines += [f'| {name} | {a} | {b} | {c} |' for name, a, b, c in rows]
    target = f' (target < {100 * OVERHEAD_TARGET:.0f} %)' if report['model'] == OVERHEAD_TARGET_MODEL else ''
    lines += ['', f"encode_image alone: {ours['encode_image_images_per_s']:.3f} images/s; MVFA test pass overhead "
                  f"{100 * report['mvfa_overhead']:.1f} %{target}, adapters "
                  f"alone {100 * report['adapter_overhead']:.1f} %",
              '(ratios: throughput and speed-ups ours/reference, higher is better; memory ours/reference)']
    return '\n'.join(lines)
