"""The segmentation losses of MVFA, as the authors define them."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FocalLoss(nn.Module):
    """Focal loss on probabilities (N, C, H, W) against integer targets (N, 1, H, W) or (N, H, W).

    The one-hot target is clamped to [smooth / (C - 1), 1 - smooth] and `smooth` is added to
    p_t before the log; no class weighting. Mean over all pixels.
    """

    def __init__(self, gamma: float = 2.0, smooth: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 <= smooth <= 1.0:
            raise ValueError(f'smooth must be in [0, 1], got {smooth}')
        self.gamma = gamma
        self.smooth = smooth

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        num_classes = probs.shape[1]
        probs = probs.flatten(2).transpose(1, 2).reshape(-1, num_classes)
        one_hot = torch.zeros_like(probs).scatter_(1, target.reshape(-1, 1).long(), 1.0)
        one_hot = one_hot.clamp(self.smooth / (num_classes - 1), 1.0 - self.smooth)
        p_t = (one_hot * probs).sum(dim=1) + self.smooth
        return (-torch.pow(1.0 - p_t, self.gamma) * p_t.log()).mean()


class BinaryDiceLoss(nn.Module):
    """1 - Dice with smoothing 1, per sample, averaged over the batch."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        probs, target = probs.reshape(target.shape[0], -1), target.reshape(target.shape[0], -1)
        dice = (2 * (probs * target).sum(1) + self.smooth) / (probs.sum(1) + target.sum(1) + self.smooth)
        return 1 - dice.mean()
