"""The two things every script does: score a test set, and take a training step.

`evaluate` serves model selection in `train_*.py` and the `test_*.py` scripts alike.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from CLIP.adapter import MultiLevelAdaptedCLIP
from loss import BinaryDiceLoss, FocalLoss
from mvfa import scoring
from mvfa.metrics import auroc


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is fp16 on CUDA, as the authors ran, and fp32 elsewhere; other values stay."""
    if precision != 'auto':
        return precision
    return 'fp16' if device.type == 'cuda' else 'fp32'


# The dtype each reduced precision autocasts to.
AUTOCAST_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def autocast(device: torch.device, precision: str) -> ContextManager:
    """fp16/bf16 autocast where asked for (the authors ran fp16 on CUDA); plain fp32 otherwise."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def prepare_for_precision(model: MultiLevelAdaptedCLIP, precision: str) -> MultiLevelAdaptedCLIP:
    """The model as it runs at `precision` (resolved): in fp16 or bf16 its frozen matrix weights are
    stored in that dtype, which changes no number (`cast_frozen_weights`)."""
    if precision in AUTOCAST_DTYPES:
        model.cast_frozen_weights(AUTOCAST_DTYPES[precision])
    return model


@dataclass
class Evaluation:
    """Scores of a test set, after the test-set normalisation, and their AUROCs."""
    labels: np.ndarray
    image_scores: np.ndarray
    image_auroc: float
    masks: Optional[np.ndarray] = None
    pixel_scores: Optional[np.ndarray] = None
    pixel_auroc: Optional[float] = None
    # (N, S, S) maps in [0, 1] for heatmaps, every object (`evaluate(keep_maps=True)`).
    maps: Optional[np.ndarray] = None

    @property
    def selection_score(self) -> float:
        """What the authors maximise to pick a checkpoint: image AUROC, plus pixel AUROC if any."""
        return self.image_auroc + (self.pixel_auroc or 0.0)

    def report(self, obj: str) -> str:
        lines = [f'{obj} pAUC : {round(self.pixel_auroc, 4)}'] if self.pixel_auroc is not None else []
        return '\n'.join(lines + [f'{obj} AUC : {round(self.image_auroc, 4)}'])


@dataclass
class MemoryBank:
    """Per level, the normalised seg and det tokens of the augmented normal support images."""
    seg: List[Tensor]
    det: List[Tensor]


@torch.no_grad()  # not inference_mode: training steps start from these streams
def embed_images(model: MultiLevelAdaptedCLIP, images: Tensor, batch_size: int, device: torch.device,
                 precision: str = 'fp32') -> Tensor:
    """The streams the first adapters read, for `model.tokens`: the blocks up to them are
    frozen, so images seen every epoch need them once (ViT-L at 240 px: 1.2 MB per image in fp32)."""
    streams = []
    for start in range(0, len(images), batch_size):
        with autocast(device, precision):
            streams.append(model.embed(images[start:start + batch_size].to(device)))
    return torch.cat(streams)


def cache_streams(model: MultiLevelAdaptedCLIP, loader: DataLoader, device: torch.device,
                  precision: str = 'fp32') -> DataLoader:
    """A loader of the `embed` streams of `loader`'s images, with their labels and masks, computed
    once for a set that is scored again and again (1.2 MB per image for ViT-L at 240 px)."""
    streams, labels, masks = [], [], []
    # Iterating a DataLoader draws from the global generator: forked, so that caching leaves the
    # training order (and every later number) as it would be without it.
    with torch.random.fork_rng(devices=[]):
        for images, batch_labels, batch_masks in loader:
            streams.append(embed_images(model, images, len(images), device, precision))
            labels.append(batch_labels)
            masks.append(batch_masks > 0.5)
    return DataLoader(TensorDataset(torch.cat(streams), torch.cat(labels), torch.cat(masks)),
                      batch_size=loader.batch_size)


@torch.inference_mode()
def build_memory_bank(model: MultiLevelAdaptedCLIP, normal_images: Tensor, batch_size: int,
                      device: torch.device, precision: str = 'fp32') -> MemoryBank:
    """The bank of the augmented normal support images (or of their `embed_images` streams)."""
    seg_tokens: List[List[Tensor]] = [[] for _ in model.features]
    det_tokens: List[List[Tensor]] = [[] for _ in model.features]
    for start in range(0, len(normal_images), batch_size):
        with autocast(device, precision):
            seg, det = model.tokens(normal_images[start:start + batch_size].to(device))
        for level, (s, d) in enumerate(zip(seg, det)):
            seg_tokens[level].append(s)
            det_tokens[level].append(d)
    return MemoryBank([scoring.memory_bank(t) for t in seg_tokens], [scoring.memory_bank(t) for t in det_tokens])


@torch.inference_mode()
def evaluate(model: MultiLevelAdaptedCLIP, loader: DataLoader, text_features: Tensor, with_masks: bool,
             img_size: int, device: torch.device, precision: str = 'fp32',
             bank: Optional[MemoryBank] = None, progress: bool = True, keep_maps: bool = False) -> Evaluation:
    """Score a test set: zero-shot alone, or fused with the memory bank when one is given.

    Objects with masks are scored on the seg head (image score: the max of the fused map in the
    few-shot setting); the others on the det head. `keep_maps` also keeps a map per image in
    `maps`: the pixel scores, or for the others maps of the det head their image scores come from.
    """
    labels, masks, image_parts, map_parts = [], [], {'zero': [], 'few': []}, {'zero': [], 'few': []}
    for images, batch_labels, batch_masks in tqdm(loader, desc='test', leave=False, disable=not progress):
        with autocast(device, precision):
            seg, det = model.tokens(images.to(device, non_blocking=True))
            if bank is None or not with_masks:
                image_parts['zero'].append(scoring.zero_shot_image_scores(det, text_features).float())
            if bank is not None and not with_masks:
                few_maps = scoring.few_shot_maps(det, bank.det, img_size)
                image_parts['few'].append(few_maps.flatten(1).mean(dim=1))
                if keep_maps:
                    map_parts['few'].append(few_maps)
            if with_masks:
                map_parts['zero'].append(scoring.zero_shot_maps(seg, text_features, img_size).float())
                if bank is not None:
                    map_parts['few'].append(scoring.few_shot_maps(seg, bank.seg, img_size))
            elif keep_maps:
                map_parts['zero'].append(scoring.zero_shot_maps(det, text_features, img_size).float())
        labels.append(batch_labels)
        masks.append(batch_masks[:, 0] > 0.5)
    labels_np = torch.cat(labels).numpy().astype(np.int64)
    if with_masks:
        pixel_scores = normalised_scores(map_parts)
        image_scores = normalised_scores(image_parts) if bank is None else pixel_scores.flatten(1).amax(dim=1)
    else:
        pixel_scores = None
        image_scores = normalised_scores(image_parts)
    result = Evaluation(labels=labels_np, image_scores=image_scores.cpu().numpy(),
                        image_auroc=auroc(labels_np, image_scores.cpu().numpy()))
    if pixel_scores is not None:
        result.masks = torch.cat(masks).numpy()
        result.pixel_scores = pixel_scores.cpu().numpy()
        result.pixel_auroc = auroc(result.masks, result.pixel_scores)
    if keep_maps:
        result.maps = result.pixel_scores if with_masks else normalised_scores(map_parts).cpu().numpy()
    return result


def normalised_scores(parts: Dict[str, List[Tensor]]) -> Tensor:
    """The batches of zero-shot scores normalised over the test set, fused with the few-shot
    ones where there are any."""
    zero_shot = torch.cat(parts['zero'])
    if not parts['few']:
        return scoring.min_max_normalise(zero_shot)
    return scoring.fuse(zero_shot, torch.cat(parts['few']))


class MVFALoss:
    """The training loss of a batch, summed over levels.

    det: BCE-with-logits of the mean abnormal probability (a probability fed as a logit: the
    published models were trained so). seg (images with masks only): focal loss of the upsampled
    state probabilities plus Dice of the abnormal one.
    """

    def __init__(self, img_size: int) -> None:
        self.img_size = img_size
        self.focal, self.dice, self.bce = FocalLoss(), BinaryDiceLoss(), torch.nn.BCEWithLogitsLoss()

    def __call__(self, seg_tokens: Sequence[Tensor], det_tokens: Sequence[Tensor], text_features: Tensor,
                 labels: Tensor, masks: Optional[Tensor]) -> Tensor:
        loss = sum(self.bce(scoring.zero_shot_image_scores([t], text_features), labels) for t in det_tokens)
        if masks is not None:
            masks = (masks > 0.5).float()
            for level_tokens in seg_tokens:
                probs = scoring.zero_shot_level_probs(level_tokens, text_features, self.img_size)
                loss = loss + self.focal(probs, masks) + self.dice(probs[:, 1], masks)
        return loss


def train_step(model: MultiLevelAdaptedCLIP, seg_optimizer: torch.optim.Optimizer,
               det_optimizer: torch.optim.Optimizer, loss_fn: MVFALoss, images: Tensor, labels: Tensor,
               masks: Optional[Tensor], text_features: Tensor, device: torch.device,
               precision: str = 'fp32') -> float:
    """One optimisation step; the seg adapters are stepped only for images with masks, as published.

    Returns the loss, or NaN when the loss is not finite (the step is then skipped).
    """
    with autocast(device, precision):
        seg, det = model.tokens(images.to(device))
        loss = loss_fn(seg, det, text_features, labels.to(device).float(),
                       None if masks is None else masks.to(device))
    if not torch.isfinite(loss):
        return float('nan')
    seg_optimizer.zero_grad(set_to_none=True)
    det_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    det_optimizer.step()
    if masks is not None:
        seg_optimizer.step()
    return loss.item()


def adapter_optimizers(model: MultiLevelAdaptedCLIP, learning_rate: float) -> List[torch.optim.Optimizer]:
    """Separate Adam optimizers for the seg and the det adapters, with the authors' betas."""
    return [torch.optim.Adam(adapters.parameters(), lr=learning_rate, betas=(0.5, 0.999))
            for adapters in (model.seg_adapters, model.det_adapters)]
