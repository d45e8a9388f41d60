"""Seeding and the few-shot augmentation that turns each support image into eleven."""
from __future__ import annotations

import math
import random
from typing import List, Optional, Tuple

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prompt import encode_text_with_prompt_ensemble

__all__ = ['augment', 'encode_text_with_prompt_ensemble', 'setup_seed']

# The authors' geometry: small rotations (radians) and shifts (in normalised [-1, 1] coordinates).
ROTATIONS = (-math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8)
TRANSLATIONS = ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
AUGMENTED_COPIES = 1 + len(ROTATIONS) + len(TRANSLATIONS) + 2  # original, ..., hflip, vflip


def setup_seed(seed: int) -> None:
    """Seed random, numpy and torch, and make cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _warp(x: Tensor, matrix: List[List[float]]) -> Tensor:
    """Affine warp with reflection padding; the matrix is built in float64 then cast, as the authors did."""
    theta = torch.tensor(matrix, dtype=torch.float64).to(x).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)


def _geometric_views(x: Tensor) -> List[Tensor]:
    """The eleven views of a batch, each over all its images: original, rotations, shifts, flips."""
    views = [x]
    views += [_warp(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]) for a in ROTATIONS]
    views += [_warp(x, [[1.0, 0.0, a], [0.0, 1.0, b]]) for a, b in TRANSLATIONS]
    views += [kornia.geometry.transform.hflip(x), kornia.geometry.transform.vflip(x)]
    return views


def augment(images: Tensor, masks: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Eleven copies of every image (N, C, H, W) -> (11 N, C, H, W), masks warped alike.

    Normal images come without masks and get all-zero ones.
    """
    augmented = torch.cat(_geometric_views(images))
    if masks is None:
        return augmented, augmented.new_zeros(augmented.shape[0], 1, *augmented.shape[2:])
    return augmented, torch.cat(_geometric_views(masks))
