"""Anomaly scores from adapter tokens: the zero-shot text head, the few-shot memory bank, fusion.

Every function takes the per-level token lists of `MultiLevelAdaptedCLIP` (class token first)
and is batched over images. Scores of one image do not depend on the rest of its batch.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prompt import ABNORMAL

# CLIP's learned logit scale, rounded and fixed by the authors.
LOGIT_SCALE = 100.0
# Elements of one (patches x bank) similarity block: bounds the memory of the nearest-neighbour search
# (16 MiB in fp32, as fast on a CPU as the whole product at once, and kinder to its caches).
SIMILARITY_BLOCK = 1 << 22
# Fusion weights of the zero-shot (text) and few-shot (memory bank) scores.
ZERO_SHOT_WEIGHT = FEW_SHOT_WEIGHT = 0.5

Tokens = Sequence[Tensor]


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


def text_logits(tokens: Tensor, text_features: Tensor) -> Tensor:
    """(B, L, C) patch tokens, (C, 2) text features -> (B, L, 2) scaled cosine logits."""
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    return LOGIT_SCALE * tokens @ text_features.to(tokens.dtype)


def zero_shot_image_scores(det_tokens: Tokens, text_features: Tensor) -> Tensor:
    """(B,) image scores: mean abnormal probability over patches, summed over levels."""
    per_level = [text_logits(patch_tokens(t), text_features).softmax(dim=-1)[..., ABNORMAL].mean(dim=-1)
                 for t in det_tokens]
    return torch.stack(per_level).sum(dim=0)


def zero_shot_level_probs(level_tokens: Tensor, text_features: Tensor, img_size: int) -> Tensor:
    """(B, 2, S, S) state probabilities of one level: logits upsampled first, then softmax."""
    logits = text_logits(patch_tokens(level_tokens), text_features).transpose(1, 2)
    return upsample(logits, img_size).softmax(dim=1)


def zero_shot_maps(seg_tokens: Tokens, text_features: Tensor, img_size: int) -> Tensor:
    """(B, S, S) anomaly maps: abnormal probability per pixel, summed over levels.

    The abnormal softmax probability of two states is the sigmoid of their logit difference,
    and upsampling is linear, so one channel is upsampled instead of two (what
    `zero_shot_level_probs` computes, to float precision).
    """
    maps = []
    for level_tokens in seg_tokens:
        logits = text_logits(patch_tokens(level_tokens), text_features)
        margin = (logits[..., ABNORMAL] - logits[..., 1 - ABNORMAL]).unsqueeze(1)
        maps.append(upsample(margin, img_size)[:, 0].sigmoid())
    return torch.stack(maps).sum(dim=0)


def memory_bank(tokens: List[Tensor]) -> Tensor:
    """One level's bank (N, C) from a list of (B, 1 + L, C) normal-image tokens, class tokens
    included as in the authors' code, L2-normalised once for the cosine search."""
    bank = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens])
    return F.normalize(bank.float(), dim=-1, eps=1e-8)


def nearest_similarity(queries: Tensor, bank: Tensor) -> Tensor:
    """(Q, C) queries, (N, C) normalised bank -> (Q,) max cosine similarity, in bank blocks."""
    queries = F.normalize(queries.float(), dim=-1, eps=1e-8)
    block = max(1, SIMILARITY_BLOCK // max(1, queries.shape[0]))
    best = torch.full((queries.shape[0],), -math.inf, device=queries.device)
    for start in range(0, bank.shape[0], block):
        best = torch.maximum(best, (queries @ bank[start:start + block].T).amax(dim=1))
    return best


def few_shot_maps(tokens: Tokens, banks: Sequence[Tensor], img_size: int) -> Tensor:
    """(B, S, S) anomaly maps: 1 - cosine similarity to the nearest bank token, summed over levels.

    Upsampling is linear, so the levels are summed on the patch grid and upsampled once.
    """
    distances = []
    for level_tokens, bank in zip(tokens, banks):
        patches = patch_tokens(level_tokens)
        distances.append(1.0 - nearest_similarity(patches.reshape(-1, patches.shape[-1]), bank))
    total = torch.stack(distances).sum(dim=0).reshape(tokens[0].shape[0], 1, -1)
    return upsample(total, img_size)[:, 0]


def min_max_normalise(scores: Tensor) -> Tensor:
    """Scale to [0, 1] over everything given (a whole test set), as the authors do before fusing.

    Constant scores become zeros (all tied) rather than the authors' 0 / 0 = NaN.
    """
    low, high = scores.min(), scores.max()
    if high == low:
        return torch.zeros_like(scores)
    return (scores - low) / (high - low)


def fuse(zero_shot: Tensor, few_shot: Tensor) -> Tensor:
    """Test-set-normalised zero-shot and few-shot scores, averaged."""
    return ZERO_SHOT_WEIGHT * min_max_normalise(zero_shot) + FEW_SHOT_WEIGHT * min_max_normalise(few_shot)
