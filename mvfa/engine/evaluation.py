"""Scoring a test set: the one evaluation that model selection and the test scripts share.

Every batch is scored on the model's device by `scoring.score_batch` and kept there; the
test-set normalisation, the fusion and the AUROCs run there too, and the scores are copied to
the host once, when the set is complete. With a `scoring.PerImageNormalisation` (`--normalisation reference`)
each image is normalised on its own instead, by statistics of the normal references.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa.method import scoring
from mvfa.method.memory_bank import MemoryBank
from mvfa.method.metrics import auroc, device_auroc



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
    # Seconds `evaluate` took, reading the images included (the results file's `cost`).
    seconds: Optional[float] = None

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


@torch.inference_mode()
def evaluate(model: MultiLevelAdaptedCLIP, loader: DataLoader, text_features: Tensor, has_masks: bool,
             bank: Optional[MemoryBank] = None, progress: bool = True, keep_maps: bool = False,
             keep_level_maps: bool = False, inductive: Optional[scoring.PerImageNormalisation] = None) -> Evaluation:
    """Score a test set: zero-shot alone, or fused with the memory bank when one is given, by the test-set
    rules of `scoring` (`heads_scored`, `test_set_scores`). `keep_maps` also keeps a map per image in
    `maps`: the pixel scores, or for the others maps of the det head their image scores come from;
    `keep_level_maps` keeps those maps of each level apart too, in `level_maps` (K times the memory).
    `inductive`: each image normalised on its own (the level maps stay normalised over the test set).
    The loader yields images, or frozen streams from `cache_streams`. Drawing no random numbers
    (a DataLoader draws one per pass), it leaves a training run that evaluates as it would be.
    """
    started = time.perf_counter()
    tokens_of = model.adapter_tokens_from_stream if isinstance(loader.dataset, FrozenStreams) else model.adapter_tokens
    keep_maps = keep_maps or keep_level_maps
    map_head, image_scores_needed = scoring.heads_scored(has_masks, bank is not None, keep_maps)
    parts: Dict[str, List[Tensor]] = {'zero_image': [], 'few_image': [], 'zero_map': [], 'few_map': [],
                                      'zero_level_maps': [], 'few_level_maps': []}
    labels, masks = [], []
    with torch.random.fork_rng(devices=[]):
        for inputs, batch_labels, batch_masks in tqdm(loader, desc='test', leave=False, disable=not progress):
            with model.autocast():
                seg, det = tokens_of(inputs.to(model.device, non_blocking=True))
                scores = scoring.score_batch(seg, det, text_features, model.img_size, bank,
                                             image_scores=image_scores_needed, map_head=map_head,
                                             config=model.config, level_maps=keep_level_maps)
            for name, part in vars(scores).items():
                if part is not None:
                    parts[name].append(part)
            labels.append(batch_labels)
            masks.append(batch_masks[:, 0] > model.config.mask_threshold)
    labels_tensor = torch.cat(labels).long()
    image_scores, pixel_scores = scoring.test_set_scores(parts, has_masks, bank is not None, inductive)
    result = Evaluation(labels=labels_tensor.numpy(), image_scores=image_scores.cpu().numpy(),
                        image_auroc=exact_auroc(labels_tensor, image_scores))
    if pixel_scores is not None:
        masks_tensor = torch.cat(masks)
        result.pixel_auroc = exact_auroc(masks_tensor, pixel_scores)
        result.masks = masks_tensor.numpy()
        result.pixel_scores = pixel_scores.cpu().numpy()
    if keep_maps:
        result.maps = result.pixel_scores if has_masks else scoring.normalised_scores(
            parts['zero_map'], parts['few_map'], inductive, maps=True).cpu().numpy()
    if keep_level_maps:
        levels = range(len(model.features))
        result.level_maps = torch.stack([
            scoring.normalised_scores([batch[:, level] for batch in parts['zero_level_maps']],
                                      [batch[:, level] for batch in parts['few_level_maps']])
            for level in levels], dim=1).cpu().numpy()
    result.seconds = time.perf_counter() - started  # the scores are on the host: the device is done
    return result
