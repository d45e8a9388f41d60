"""Scoring a test set: the one evaluation that model selection and the test scripts share.

Every batch is scored on the model's device by `scoring.score_batch` and kept there; the
test-set normalisation, the fusion and the AUROCs run there too, and the scores are copied to
the host once, when the set is complete. With a `PerImageNormalisation` (`--normalisation reference`)
each image is normalised on its own instead, by statistics of the normal references.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa import scoring
from mvfa.memory_bank import MemoryBank
from mvfa.metrics import auroc, device_auroc



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
    # (N, K, S, S): the maps of each of the K levels apart, each normalised over the test set as
    # `maps` is (`evaluate(keep_level_maps=True)`).
    level_maps: Optional[np.ndarray] = None

    @property
    def selection_score(self) -> float:
        """What the authors maximise to pick a checkpoint: image AUROC, plus pixel AUROC if any."""
        return self.image_auroc + (self.pixel_auroc or 0.0)

    def report(self, obj: str) -> str:
        lines = [f'{obj} pAUC : {round(self.pixel_auroc, 4)}'] if self.pixel_auroc is not None else []
        return '\n'.join(lines + [f'{obj} AUC : {round(self.image_auroc, 4)}'])


class FrozenStreams(TensorDataset):
    """Items (frozen stream, label, mask): a test set whose frozen blocks ran once (`cache_streams`)."""


def exact_auroc(labels: Tensor, scores: Tensor) -> float:
    """AUROC where the scores are: torch's sort on an accelerator, the memory-light numpy count on a CPU."""
    if scores.device.type == 'cpu':
        return auroc(labels.numpy(), scores.numpy())
    return device_auroc(labels.to(scores.device), scores)


class PerImageNormalisation(Protocol):
    """Normalises each image's scores on its own (`mvfa.inductive.Inductive`, `--normalisation reference`)."""

    def fuse(self, zero: Tensor, few: Optional[Tensor], maps: bool) -> Tensor:
        """Summed-over-levels zero-shot (and few-shot, or None) image scores (B,) or maps (B, S, S), fused."""


def normalised_scores(zero_shot: List[Tensor], few_shot: List[Tensor],
                      inductive: Optional[PerImageNormalisation] = None, maps: bool = False) -> Tensor:
    """The batches of zero-shot scores normalised over the test set, fused with the few-shot
    ones where there are any; with `inductive`, each image's (`maps`: pixel maps) normalised on its own."""
    if inductive is not None:
        return inductive.fuse(torch.cat(zero_shot), torch.cat(few_shot) if few_shot else None, maps)
    if not few_shot:
        return scoring.min_max_normalise(torch.cat(zero_shot))
    return scoring.fuse(torch.cat(zero_shot), torch.cat(few_shot))


@torch.inference_mode()
def evaluate(model: MultiLevelAdaptedCLIP, loader: DataLoader, text_features: Tensor, has_masks: bool,
             bank: Optional[MemoryBank] = None, progress: bool = True, keep_maps: bool = False,
             keep_level_maps: bool = False, inductive: Optional[PerImageNormalisation] = None) -> Evaluation:
    """Score a test set: zero-shot alone, or fused with the memory bank when one is given.

    Objects with masks are scored on the seg head (image score: the max of the fused map in the
    few-shot setting); the others on the det head. `keep_maps` also keeps a map per image in
    `maps`: the pixel scores, or for the others maps of the det head their image scores come from;
    `keep_level_maps` keeps those maps of each level apart too, in `level_maps` (K times the memory).
    `inductive`: each image normalised on its own (the level maps stay normalised over the test set).
    The loader yields images, or frozen streams from `cache_streams`. Drawing no random numbers
    (a DataLoader draws one per pass), it leaves a training run that evaluates as it would be.
    """
    tokens_of = model.adapter_tokens_from_stream if isinstance(loader.dataset, FrozenStreams) else model.adapter_tokens
    keep_maps = keep_maps or keep_level_maps
    map_head = 'seg' if has_masks else ('det' if keep_maps else None)
    image_scores_needed = not (has_masks and bank is not None)
    parts: Dict[str, List[Tensor]] = {'zero_image': [], 'few_image': [], 'zero_map': [], 'few_map': [],
                                      'zero_level_maps': [], 'few_level_maps': []}
    labels, masks = [], []
    with torch.random.fork_rng(devices=[]):
        for inputs, batch_labels, batch_masks in tqdm(loader, desc='test', leave=False, disable=not progress):
            with model.autocast():
                seg, det = tokens_of(inputs.to(model.device, non_blocking=True))
                scores = scoring.score_batch(seg, det, text_features, model.img_size, bank,
                                             image_scores_needed, map_head, model.config, keep_level_maps)
            for name, part in vars(scores).items():
                if part is not None:
                    parts[name].append(part)
            labels.append(batch_labels)
            masks.append(batch_masks[:, 0] > 0.5)
    labels_tensor = torch.cat(labels).long()
    if has_masks:
        pixel_scores = normalised_scores(parts['zero_map'], parts['few_map'], inductive, maps=True)
        image_scores = (pixel_scores.flatten(1).amax(dim=1) if bank is not None
                        else normalised_scores(parts['zero_image'], parts['few_image'], inductive))
    else:
        pixel_scores = None
        image_scores = normalised_scores(parts['zero_image'], parts['few_image'], inductive)
    result = Evaluation(labels=labels_tensor.numpy(), image_scores=image_scores.cpu().numpy(),
                        image_auroc=exact_auroc(labels_tensor, image_scores))
    if pixel_scores is not None:
        masks_tensor = torch.cat(masks)
        result.pixel_auroc = exact_auroc(masks_tensor, pixel_scores)
        result.masks = masks_tensor.numpy()
        result.pixel_scores = pixel_scores.cpu().numpy()
    if keep_maps:
        result.maps = (result.pixel_scores if has_masks
                       else normalised_scores(parts['zero_map'], parts['few_map'], inductive, maps=True).cpu().numpy())
    if keep_level_maps:
        levels = range(len(model.features))
        result.level_maps = torch.stack([normalised_scores([batch[:, level] for batch in parts['zero_level_maps']],
                                                           [batch[:, level] for batch in parts['few_level_maps']])
                                         for level in levels], dim=1).cpu().numpy()
    return result
