"""Anomaly scores from adapter tokens: the zero-shot text head, the few-shot memory bank, fusion.

Change the scoring here. `score_batch` turns one batch of adapter tokens (and a memory bank,
when there is one) into image scores and anomaly maps; test scripts, model selection,
`predict.py` and `bench.py` all score through it. The test-set rules are here too: which head scores
an object (`heads_scored`), and how a set's batches are normalised and fused (`test_set_scores`).
The functions it is built from are pure, batched over images and computed on the tokens' device,
without reading anything back to the host: a score of one image does not depend on the rest of its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mvfa.common.config import PAPER, MVFAConfig
from prompt import ABNORMAL_COLUMN, NORMAL_COLUMN

# Elements of one (patches x bank) similarity block: bounds the memory of the nearest-neighbour
# search. On a CPU 16 MiB in fp32 is as fast as the whole product and kinder to its caches; a GPU
# wants few large products (256 MiB).
CPU_SIMILARITY_BLOCK = 1 << 22
ACCELERATOR_SIMILARITY_BLOCK = 1 << 26
HEADS = ('seg', 'det')

Tokens = Sequence[Tensor]


class PatchDistances(Protocol):
    """A memory bank: how far each patch of a batch is from the normal images it holds."""

    def patch_distances(self, head: str, level: int, patches: Tensor) -> Tensor:
        """(B, L, C) patch tokens of `head` at `level` -> (B, L) distances (0: a normal patch)."""


def patch_tokens(level_tokens: Tensor) -> Tensor:
    """(B, 1 + L, C) -> (B, L, C): the class token carries no location."""
    return level_tokens[:, 1:, :]


def grid_side(num_patches: int) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f'{num_patches} patches do not form a square grid')
    return side


def upsample(patch_maps: Tensor, img_size: int) -> Tensor:
    """(B, K, L) patch values -> (B, K, S, S) by bilinear interpolation with aligned corners."""
    side = grid_side(patch_maps.shape[-1])
    grid = patch_maps.reshape(*patch_maps.shape[:2], side, side)
    return F.interpolate(grid, size=img_size, mode='bilinear', align_corners=True)


def text_logits(tokens: Tensor, text_features: Tensor, config: MVFAConfig = PAPER) -> Tensor:
    """(B, L, C) patch tokens, (C, 2) text features -> (B, L, 2) scaled cosine logits."""
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    return config.logit_scale * tokens @ text_features.to(tokens.dtype)


def zero_shot_image_scores(det_tokens: Tokens, text_features: Tensor, config: MVFAConfig = PAPER) -> Tensor:
    """(B,) image scores: mean abnormal probability over patches, summed over levels."""
    per_level = [text_logits(patch_tokens(t), text_features, config).softmax(dim=-1)[..., ABNORMAL_COLUMN]
                 .mean(dim=-1) for t in det_tokens]
    return torch.stack(per_level).sum(dim=0)


def zero_shot_level_probs(level_tokens: Tensor, text_features: Tensor, img_size: int,
                          config: MVFAConfig = PAPER) -> Tensor:
    """(B, 2, S, S) state probabilities of one level: logits upsampled first, then softmax."""
    logits = text_logits(patch_tokens(level_tokens), text_features, config).transpose(1, 2)
    return upsample(logits, img_size).softmax(dim=1)


def zero_shot_level_maps(tokens: Tokens, text_features: Tensor, img_size: int, config: MVFAConfig = PAPER) -> Tensor:
    """(B, K, S, S): each of the K levels' abnormal probability per pixel.

    The abnormal softmax probability of two states is the sigmoid of their logit difference,
    and upsampling is linear, so one channel per level is upsampled (what
    `zero_shot_level_probs` computes, to float precision), all levels in one call.
    """
    margins = []
    for level_tokens in tokens:
        logits = text_logits(patch_tokens(level_tokens), text_features, config)
        margins.append(logits[..., ABNORMAL_COLUMN] - logits[..., NORMAL_COLUMN])
    return upsample(torch.stack(margins, dim=1), img_size).sigmoid()


def zero_shot_maps(tokens: Tokens, text_features: Tensor, img_size: int, config: MVFAConfig = PAPER) -> Tensor:
    """(B, S, S) anomaly maps: abnormal probability per pixel, summed over levels."""
    return zero_shot_level_maps(tokens, text_features, img_size, config).sum(dim=1)


def normalised_bank(tokens: List[Tensor]) -> Tensor:
    """One level's bank (N, C) from a list of (B, 1 + L, C) normal-image tokens, class tokens
    included as in the authors' code, L2-normalised once for the cosine search."""
    bank = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens])
    return F.normalize(bank.float(), dim=-1, eps=1e-8)


def nearest_similarity(queries: Tensor, bank: Tensor) -> Tensor:
    """(Q, C) queries, (N, C) normalised bank -> (Q,) max cosine similarity, one matrix product per
    block of the bank."""
    queries = F.normalize(queries.float(), dim=-1, eps=1e-8)
    block_elements = CPU_SIMILARITY_BLOCK if queries.device.type == 'cpu' else ACCELERATOR_SIMILARITY_BLOCK
    block = max(1, block_elements // max(1, queries.shape[0]))
    best = torch.full((queries.shape[0],), -math.inf, device=queries.device)
    for start in range(0, bank.shape[0], block):
        best = torch.maximum(best, (queries @ bank[start:start + block].T).amax(dim=1))
    return best


def few_shot_level_distances(tokens: Tokens, bank: PatchDistances, head: str) -> List[Tensor]:
    """Per level, each patch's (B, L) distance to the bank."""
    return [bank.patch_distances(head, level, patch_tokens(t)) for level, t in enumerate(tokens)]


def summed_map(level_distances: List[Tensor], img_size: int) -> Tensor:
    """(B, S, S): the levels' (B, L) distances summed. Upsampling is linear, so they are summed on
    the patch grid and upsampled once."""
    return upsample(sum(level_distances)[:, None], img_size)[:, 0]


def few_shot_maps(tokens: Tokens, bank: PatchDistances, head: str, img_size: int) -> Tensor:
    """(B, S, S) anomaly maps: each patch's distance to the bank, summed over levels."""
    return summed_map(few_shot_level_distances(tokens, bank, head), img_size)


def min_max_normalise(scores: Tensor) -> Tensor:
    """Scale to [0, 1] over everything given (a whole test set), as the authors do before fusing.

    Constant scores become zeros (all tied) rather than the authors' 0 / 0 = NaN; decided on
    the device, without reading the range back.
    """
    low, high = scores.min(), scores.max()
    span = high - low
    return torch.where(span > 0, (scores - low) / torch.where(span > 0, span, 1.0), 0.0)


def fuse(zero_shot: Tensor, few_shot: Tensor, config: MVFAConfig = PAPER) -> Tensor:
    """Test-set-normalised zero-shot and few-shot scores, weighted (0.5 / 0.5)."""
    return config.zero_shot_weight * min_max_normalise(zero_shot) + config.few_shot_weight * min_max_normalise(few_shot)


@dataclass
class BatchScores:
    """Raw scores of a batch, each summed over levels, before any test-set normalisation.

    Image scores (B,) come from the det head; maps (B, S, S) from the head `score_batch` was
    asked for, and with `level_maps` that head's maps of each level apart (B, K, S, S), whose
    sum over K is the map. Few-shot parts are None without a memory bank, and parts not asked
    for are None.
    """
    zero_image: Optional[Tensor] = None
    few_image: Optional[Tensor] = None
    zero_map: Optional[Tensor] = None
    few_map: Optional[Tensor] = None
    zero_level_maps: Optional[Tensor] = None
    few_level_maps: Optional[Tensor] = None


def score_batch(seg_tokens: Tokens, det_tokens: Tokens, text_features: Tensor, img_size: int,
                bank: Optional[PatchDistances] = None, *, image_scores: bool = True, map_head: Optional[str] = None,
                config: MVFAConfig = PAPER, level_maps: bool = False) -> BatchScores:
    """Image scores (`image_scores`) and anomaly maps (of head `map_head`, 'seg' or 'det') of a batch;
    with `level_maps` also the maps of each level (the paper's Figure 4).

    Zero-shot parts from the text features; few-shot parts from `bank` where one is given: the
    few-shot image score is the mean of the det head's few-shot map, as in the authors' code.
    """
    if map_head is not None and map_head not in HEADS:
        raise ValueError(f'map_head must be one of {HEADS} or None, got {map_head!r}')
    if level_maps and map_head is None:
        raise ValueError('level_maps needs a map_head')
    scores = BatchScores()
    det_few_map = None
    if image_scores:
        scores.zero_image = zero_shot_image_scores(det_tokens, text_features, config).float()
        if bank is not None:
            det_few_map = few_shot_maps(det_tokens, bank, 'det', img_size)
            scores.few_image = det_few_map.flatten(1).mean(dim=1)
    if map_head is not None:
        tokens = seg_tokens if map_head == 'seg' else det_tokens
        zero_levels = zero_shot_level_maps(tokens, text_features, img_size, config)
        scores.zero_map = zero_levels.sum(dim=1).float()
        if level_maps:
            scores.zero_level_maps = zero_levels.float()
        if bank is not None:
            if map_head == 'det' and det_few_map is not None and not level_maps:
                scores.few_map = det_few_map
            else:
                distances = few_shot_level_distances(tokens, bank, map_head)
                scores.few_map = summed_map(distances, img_size)
                if level_maps:
                    scores.few_level_maps = upsample(torch.stack(distances, dim=1), img_size)
    return scores


# ---------------------------------------------------------------- the test-set rules

class PerImageNormalisation(Protocol):
    """Normalises each image's scores on its own (`mvfa.runs.inductive.Inductive`, `--normalisation reference`)."""

    def fuse(self, zero: Tensor, few: Optional[Tensor], maps: bool) -> Tensor:
        """Summed-over-levels zero-shot (and few-shot, or None) image scores (B,) or maps (B, S, S), fused."""


def normalised_scores(zero_shot: List[Tensor], few_shot: List[Tensor],
                      inductive: Optional[PerImageNormalisation] = None, maps: bool = False) -> Tensor:
    """The batches of zero-shot scores normalised over the test set, fused with the few-shot
    ones where there are any; with `inductive`, each image's (`maps`: pixel maps) normalised on its own."""
    if inductive is not None:
        return inductive.fuse(torch.cat(zero_shot), torch.cat(few_shot) if few_shot else None, maps)
    if not few_shot:
        return min_max_normalise(torch.cat(zero_shot))
    return fuse(torch.cat(zero_shot), torch.cat(few_shot))


def heads_scored(has_masks: bool, few_shot: bool, keep_maps: bool) -> Tuple[Optional[str], bool]:
    """(the head whose maps a test set is scored on, whether its image scores are needed): objects with masks
    are scored on the seg head, and few-shot their image score comes from the fused map; the others on the det
    head, whose maps are computed only where they are kept."""
    return ('seg' if has_masks else ('det' if keep_maps else None)), not (has_masks and few_shot)


def test_set_scores(parts: Dict[str, List[Tensor]], has_masks: bool, few_shot: bool,
                    inductive: Optional[PerImageNormalisation] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """(image scores, pixel scores or None) of a whole test set from the `BatchScores` of its batches (`parts`:
    each field's batches): normalised over the set, or each image on its own with `inductive`, then fused.
    The image score of a few-shot object with masks is the maximum of its fused map."""
    if not has_masks:
        return normalised_scores(parts['zero_image'], parts['few_image'], inductive), None
    pixel_scores = normalised_scores(parts['zero_map'], parts['few_map'], inductive, maps=True)
    image_scores = (pixel_scores.flatten(1).amax(dim=1) if few_shot
                    else normalised_scores(parts['zero_image'], parts['few_image'], inductive))
    return image_scores, pixel_scores
