"""Speed of MVFA: the authors' way of running it against ours, on the same model, weights and images.

The reference-style path reproduces how the authors' code ran: one image at a time, every CLIP
weight marked `requires_grad=True` (gradients of the frozen encoder computed and kept), attention
weights requested from every block (no fused attention kernel), the few-shot test scored per
image and per level, and scikit-learn's AUROC. Ours is `embed_images` / `train_step` /
`build_memory_bank` / `evaluate` as `train_few.py` runs them. Both score the same synthetic test
set (seg path: maps and masks); the scores must agree. Each path measures the test pass and the
epoch in fresh processes, so that each peak memory is its own.

    python bench.py                                          # ViT-L-14-336, random weights, 240 px, 4-shot
    python bench.py --model_name tiny-clip --features_list 3 6 9 12 --img_size 56 --n_images 4 --shot 1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from open_clip.transformer import ResidualAttentionBlock
from sklearn.metrics import roc_auc_score
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from CLIP import MultiLevelAdaptedCLIP, create_model
from mvfa import scoring
from mvfa.cli import pick_device
from mvfa.engine import (MVFALoss, adapter_optimizers, autocast, build_memory_bank, cache_streams, embed_images,
                         evaluate, prepare_for_precision, resolve_precision, train_step)
from utils import AUGMENTED_COPIES, augment, setup_seed

# Scores of the two paths may differ by float rounding only: the parity tolerance in fp32; in fp16 or
# bf16 the two paths round differently (other batches, other kernels), as two fp16 runs of the authors' would.
SCORE_TOLERANCE = {'fp32': 1e-4, 'fp16': 1e-2, 'bf16': 1e-1}
# Target of the MVFA overhead over plain CLIP image encoding (`encode_image`), as a fraction.
OVERHEAD_TARGET = 0.15
# The few-shot training batch and learning rate of train_few.py (and of the authors).
TRAIN_BATCH_SIZE, LEARNING_RATE = 1, 1e-3
MIB = 1 << 20

Scores = Tuple[np.ndarray, np.ndarray]  # (image scores (N,), pixel scores (N, S, S))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model_name', default='ViT-L-14-336',
                   help='open_clip model name, a config name in CLIP/model_configs (e.g. tiny-clip), or a JSON path')
    p.add_argument('--pretrain', default='none', help="'none' (random weights: speed does not depend on them), "
                                                      "'openai' or a weights file")
    p.add_argument('--img_size', type=int, default=240)
    p.add_argument('--features_list', type=int, nargs='+', default=[6, 12, 18, 24])
    p.add_argument('--n_images', type=int, default=8, help='test images, half normal, half abnormal with masks')
    p.add_argument('--batch_size', type=int, default=8, help='our inference batch (the reference runs batch 1)')
    p.add_argument('--shot', type=int, default=4, help='k abnormal + k normal support images (11 views each)')
    p.add_argument('--device', default=None, help='cuda, mps or cpu (default: cuda if available, else mps, else cpu)')
    p.add_argument('--precision', choices=('auto', 'fp32', 'fp16', 'bf16'), default='auto',
                   help='autocast of both paths; auto: fp16 on CUDA (as the authors ran), fp32 elsewhere')
    p.add_argument('--threads', type=int, default=None, help="CPU threads of each path (default: torch's)")
    p.add_argument('--seed', type=int, default=111)
    p.add_argument('--json', type=Path, default=None, help='also write the report to this JSON file')
    args = p.parse_args(argv)
    if args.n_images < 2:
        p.error('--n_images must be at least 2 (one normal and one abnormal image)')
    return args


# ----------------------------------------------------------------------------- timing and memory

def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer reads the work done, not the work launched."""
    if device.type != 'cpu':
        torch.accelerator.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type != 'cpu':
        torch.accelerator.reset_peak_memory_stats(device)
    elif Path('/proc/self/clear_refs').exists():
        Path('/proc/self/clear_refs').write_text('5')  # Linux: reset VmHWM to the current resident size


def _proc_status_bytes(field: str) -> Optional[int]:
    status = Path('/proc/self/status')
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ':'))
    return int(line.split()[1]) * 1024  # the kernel reports kB


def memory_in_use(device: torch.device) -> Optional[int]:
    """Allocated accelerator memory, or the process's resident set on the CPU (None where unknown)."""
    return torch.accelerator.memory_allocated(device) if device.type != 'cpu' else _proc_status_bytes('VmRSS')


def peak_memory(device: torch.device) -> Optional[int]:
    return torch.accelerator.max_memory_allocated(device) if device.type != 'cpu' else _proc_status_bytes('VmHWM')


def timed(device: torch.device, work: Callable[[], object]) -> Tuple[object, float]:
    """`work()` and the seconds it took."""
    synchronize(device)
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - start


def peak_above_start(device: torch.device, work: Callable[[], object]) -> Tuple[object, Optional[float]]:
    """`work()` and its peak memory in MiB above the level it started at.

    On the CPU that is the resident set, which freed memory kept for reuse stays in: so each
    measured phase runs first in a fresh process (`in_fresh_processes`).
    """
    synchronize(device)
    reset_peak_memory(device)
    start_memory = memory_in_use(device)
    result = work()
    synchronize(device)
    peak = peak_memory(device)
    return result, None if peak is None or start_memory is None else (peak - start_memory) / MIB


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


def load_model(path: str, args: argparse.Namespace, device: torch.device) -> MultiLevelAdaptedCLIP:
    """The same weights in every process (random ones come from the seeded generator); the
    reference-style path runs open_clip's own blocks."""
    setup_seed(args.seed)
    pretrained = None if args.pretrain.lower() == 'none' else args.pretrain
    return MultiLevelAdaptedCLIP(create_model(args.model_name, args.img_size, pretrained, 'cpu'),
                                 args.features_list, fused_attention=path == 'ours').to(device)


# ----------------------------------------------------------------------------- the reference-style path

@contextlib.contextmanager
def reference_style(device: torch.device, precision: str) -> Iterator[None]:
    """Attention weights requested from every block, under the authors' autocast."""
    with attention_weights_requested(), autocast(device, precision):
        yield


@contextlib.contextmanager
def attention_weights_requested() -> Iterator[None]:
    """Every block asks `nn.MultiheadAttention` for its attention weights, as the authors' modified
    open_clip did; this rules out the fused attention kernels. The text tower's causal mask is kept."""
    original = ResidualAttentionBlock.attention

    def attention(self, q_x: Tensor, k_x: Optional[Tensor] = None, v_x: Optional[Tensor] = None,
                  attn_mask: Optional[Tensor] = None) -> Tensor:
        k_x = q_x if k_x is None else k_x
        v_x = q_x if v_x is None else v_x
        attn_mask = None if attn_mask is None else attn_mask.to(q_x.dtype)
        return self.attn(q_x, k_x, v_x, need_weights=True, attn_mask=attn_mask)[0]

    ResidualAttentionBlock.attention = attention
    try:
        yield
    finally:
        ResidualAttentionBlock.attention = original


@torch.no_grad()
def reference_memory_bank(model: MultiLevelAdaptedCLIP, normal: Tensor, device: torch.device) -> List[Tensor]:
    """Per level, the raw seg tokens of every normal image, one image per forward pass."""
    tokens = [model(image.to(device))[1] for image in normal.split(1)]
    return [torch.cat([per_image[level][0] for per_image in tokens]) for level in range(len(model.features))]


@torch.no_grad()
def reference_evaluate(model: MultiLevelAdaptedCLIP, workload: Workload, bank: List[Tensor], img_size: int,
                       device: torch.device) -> Scores:
    """The authors' few-shot test of a segmentation object: per image, per level, maps to numpy;
    the bank is normalised again for every test image, as their cosine similarity did."""
    zero_maps, few_maps = [], []
    for image in workload.test_images.split(1):
        _, seg, _ = model(image.to(device))
        few_maps.append(np.sum([scoring.few_shot_maps([level], [scoring.memory_bank([level_bank])], img_size)
                                .float().cpu().numpy() for level, level_bank in zip(seg, bank)], axis=0))
        zero_maps.append(np.sum([scoring.zero_shot_maps([level], workload.text_features.to(device), img_size)
                                 .float().cpu().numpy() for level in seg], axis=0))
    pixel_scores = scoring.fuse(torch.from_numpy(np.concatenate(zero_maps)), torch.from_numpy(np.concatenate(few_maps)))
    image_scores = pixel_scores.flatten(1).amax(dim=1)
    # The AUROCs are not returned: they are computed because the authors' test (and `evaluate`) does.
    roc_auc_score(workload.test_labels.numpy(), image_scores.numpy())
    roc_auc_score((workload.test_masks[:, 0] > 0.5).numpy().ravel(), pixel_scores.numpy().ravel())
    return image_scores.numpy(), pixel_scores.numpy()


# ----------------------------------------------------------------------------- one path, in its own process

def memory_bank(path: str, model: MultiLevelAdaptedCLIP, workload: Workload, args: argparse.Namespace,
                device: torch.device) -> object:
    """The memory bank from the augmented normal support images."""
    if path == 'reference':
        return reference_memory_bank(model, workload.normal, device)
    return build_memory_bank(model, workload.normal, args.batch_size, device, args.precision)


def test_loader(workload: Workload, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(workload.test_images, workload.test_labels, workload.test_masks),
                      batch_size=batch_size)


def score_test_set(path: str, model: MultiLevelAdaptedCLIP, workload: Workload, bank: object, args: argparse.Namespace,
                   device: torch.device, loader: Optional[DataLoader] = None) -> Scores:
    """The few-shot test of the test set against `bank`; ours from `loader` if given (cached streams)."""
    if path == 'reference':
        return reference_evaluate(model, workload, bank, args.img_size, device)
    loader = test_loader(workload, args.batch_size) if loader is None else loader
    result = evaluate(model, loader, workload.text_features.to(device), True, args.img_size, device, args.precision,
                      bank=bank, progress=False)
    return result.image_scores, result.pixel_scores


def epoch(path: str, model: MultiLevelAdaptedCLIP, workload: Workload, args: argparse.Namespace,
          device: torch.device) -> Dict[str, float]:
    """Seconds of one few-shot epoch as train_few.py runs it, by part: training steps, memory bank, test.

    Ours starts the training steps and the memory bank from the support images' `embed` streams,
    which train_few.py computes once per run: `setup`, timed apart (the reference has none).
    """
    seconds: Dict[str, float] = {}

    def part(name: str, work: Callable[[], object]) -> object:
        result, seconds[name] = timed(device, work)
        return result

    seg_optimizer, det_optimizer = adapter_optimizers(model, LEARNING_RATE)
    loss_fn = MVFALoss(args.img_size)
    text_features = workload.text_features.to(device)
    ours = path == 'ours'
    inputs = (part('setup', lambda: embed_images(model, workload.train_images, args.batch_size, device,
                                                 args.precision)) if ours
              else workload.train_images)
    part('train', lambda: [train_step(model, seg_optimizer, det_optimizer, loss_fn, images, labels, masks,
                                      text_features, device, args.precision)
                           for images, masks, labels in train_loader(inputs, workload, args.seed)])
    # The augmented normal images close the training set.
    bank = part('bank', lambda: build_memory_bank(model, inputs[len(inputs) - len(workload.normal):],
                                                  args.batch_size, device, args.precision) if ours
                else memory_bank(path, model, workload, args, device))
    part('test', lambda: score_test_set(path, model, workload, bank, args, device))
    seconds['epoch'] = seconds['train'] + seconds['bank'] + seconds['test']
    return seconds


@torch.inference_mode()
def batched_throughput(forward: Callable[[Tensor], object], images: Tensor, batch_size: int,
                       device: torch.device, precision: str) -> float:
    """Images per second of `forward` over `images` in batches, after one batch of warm-up."""
    batches = [batch.to(device) for batch in images.split(batch_size)]
    with autocast(device, precision):
        forward(batches[0])
        _, seconds = timed(device, lambda: [forward(batch) for batch in batches])
    return len(images) / seconds


def encode_image(model: MultiLevelAdaptedCLIP, images: Tensor) -> Tensor:
    """CLIP's image embedding through the same blocks as MVFA's tokens, without adapters: open_clip's
    own forward is the same function, but under CPU autocast its attention copies the in-projection
    weights once per token position (ViT-L in bf16: 40 s for 8 images)."""
    visual = model.image_encoder
    return model.embedding(model.run_blocks(visual._embeds(images), 0, len(visual.transformer.resblocks)))


PHASES = ('test', 'epoch')


def measure(path: str, phase: str, args: argparse.Namespace) -> Dict:
    """Time `phase` of `path` ('reference' or 'ours') in a fresh process: 'test', the few-shot test
    (memory bank, then the test pass), or 'epoch'."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    model = load_model(path, args, device)
    if path == 'ours':
        prepare_for_precision(model, args.precision)
    workload = make_workload(args, model.image_encoder.output_dim)
    # The reference runs under autocast throughout, as the authors' loops did; ours autocasts inside.
    with reference_style(device, args.precision) if path == 'reference' else contextlib.nullcontext():
        if path == 'reference':
            model.requires_grad_(True)  # what the authors' scripts did to every parameter
        # Warm-up at the measured batch size: first-call allocations and kernel selection are not measured.
        with torch.no_grad(), autocast(device, args.precision):
            model.tokens(workload.test_images[:1 if path == 'reference' else args.batch_size].to(device))
        if phase == 'epoch':
            seconds, peak_mib = peak_above_start(device, lambda: epoch(path, model, workload, args, device))
            return {**{f'{name}_s': value for name, value in seconds.items()}, 'epoch_peak_mib': peak_mib}

        def few_shot_test() -> Tuple[object, float, Scores, float]:
            bank, bank_seconds = timed(device, lambda: memory_bank(path, model, workload, args, device))
            scores, test_seconds = timed(device, lambda: score_test_set(path, model, workload, bank, args, device))
            return bank, bank_seconds, scores, test_seconds

        (bank, bank_seconds, scores, test_seconds), peak_mib = peak_above_start(device, few_shot_test)
    result = {'image_scores': scores[0], 'pixel_scores': scores[1], 'test_images_per_s': args.n_images / test_seconds,
              'memory_bank_s': bank_seconds, 'test_peak_mib': peak_mib}
    if path == 'ours':
        # Model selection with --cache_streams scores the test set from its streams, cached once per run.
        streams = cache_streams(model, test_loader(workload, args.batch_size), device, args.precision)
        cached_scores, cached_seconds = timed(device, lambda: score_test_set(path, model, workload, bank, args, device,
                                                                             streams))
        result.update({'cached_image_scores': cached_scores[0], 'cached_pixel_scores': cached_scores[1],
                       'cached_test_images_per_s': args.n_images / cached_seconds})
        result['encode_image_images_per_s'] = batched_throughput(lambda images: encode_image(model, images),
                                                                 workload.test_images,
                                                                 args.batch_size, device, args.precision)
        result['tokens_images_per_s'] = batched_throughput(model.tokens, workload.test_images, args.batch_size, device,
                                                           args.precision)
    return result


def in_fresh_processes(path: str, args: argparse.Namespace) -> Dict:
    """Every phase of `path`, each in a process of its own."""
    result = {}
    for phase in PHASES:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context('spawn')) as pool:
            result.update(pool.submit(measure, path, phase, args).result())
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
        'torch_threads': args.threads or torch.get_num_threads(), 'img_size': args.img_size,
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
    lines += ['', f"encode_image alone: {ours['encode_image_images_per_s']:.3f} images/s; MVFA test pass overhead "
                  f"{100 * report['mvfa_overhead']:.1f} % (target < {100 * OVERHEAD_TARGET:.0f} %), adapters "
                  f"alone {100 * report['adapter_overhead']:.1f} %",
              '(ratios: throughput and speed-ups ours/reference, higher is better; memory ours/reference)']
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    report = build_report(args, in_fresh_processes('reference', args), in_fresh_processes('ours', args))
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2), encoding='utf-8')
    return report


if __name__ == '__main__':
    sys.exit(0 if main()['scores_match'] else 1)
