"""MVFA's training loss, as the authors define it: focal and Dice on pixel maps, BCE on image scores.

Change the loss here: `MVFALoss` is the whole loss of a batch, built from the parts above it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mvfa.method import scoring
from mvfa.common.config import PAPER, MVFAConfig
from prompt import ABNORMAL_COLUMN


class FocalLoss(nn.Module):
    """Focal loss on probabilities (N, C, H, W) against integer targets (N, 1, H, W) or (N, H, W).

    The one-hot target is clamped to [smooth / (C - 1), 1 - smooth] and `smooth` is added to
    p_t before the log; no class weighting. Mean over all pixels.
    """

    def __init__(self, gamma: float = PAPER.focal_gamma, smooth: float = PAPER.focal_smooth) -> None:
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
    """1 - Dice with additive smoothing (the paper: 1), per sample, averaged over the batch."""

    def __init__(self, smooth: float = PAPER.dice_smooth) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        probs, target = probs.reshape(target.shape[0], -1), target.reshape(target.shape[0], -1)
        dice = (2 * (probs * target).sum(1) + self.smooth) / (probs.sum(1) + target.sum(1) + self.smooth)
        return 1 - dice.mean()


class MVFALoss:
    """MVFA's training loss of a batch, summed over the adapted levels.

    det: BCE-with-logits of the mean abnormal probability (a probability fed as a logit: the
    published models were trained so). seg (images with masks only): focal loss of the upsampled
    state probabilities plus Dice of the abnormal one.
    """

    def __init__(self, config: MVFAConfig = PAPER) -> None:
        self.config = config
        self.focal = FocalLoss(config.focal_gamma, config.focal_smooth)
        self.dice = BinaryDiceLoss(config.dice_smooth)
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(self, seg_tokens: Sequence[Tensor], det_tokens: Sequence[Tensor], text_features: Tensor,
                 labels: Tensor, masks: Optional[Tensor]) -> Tensor:
        loss = sum(self.bce(scoring.zero_shot_image_scores([t], text_features, self.config), labels)
                   for t in det_tokens)
        if masks is not None:
            masks = (masks > self.config.mask_threshold).float()
            for level_tokens in seg_tokens:
                probs = scoring.zero_shot_level_probs(level_tokens, text_features, self.config.img_size, self.config)
                loss = loss + self.focal(probs, masks) + self.dice(probs[:, ABNORMAL_COLUMN], masks)
        return loss
