"""MVFA's settings in one place: every number of the method, as the authors' code sets it.

The model, the loss, the scoring and the scripts read `PAPER`; change a number here and every
part of the method follows. Flags of the scripts default to these values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class MVFAConfig:
    """The numbers that define MVFA (defaults: the published ones)."""

    # 1-based ViT-L/14 blocks after which a seg and a det adapter read the stream.
    levels: Tuple[int, ...] = (6, 12, 18, 24)
    # Input side in pixels: OpenAI's 336 px ViT-L/14 run at 240 px (17 x 17 patches).
    img_size: int = 240
    # After an adapted block the stream is keep * x + adapter * seg + adapter * det: most of the frozen
    # representation is kept, so deeper CLIP blocks still see familiar input.
    residual_keep: float = 0.8
    residual_adapter: float = 0.1
    # CLIP's learned logit scale, rounded and fixed by the authors.
    logit_scale: float = 100.0
    # Weights of the test-set-normalised zero-shot (text) and few-shot (memory bank) scores.
    zero_shot_weight: float = 0.5
    few_shot_weight: float = 0.5
    # Adam for each head's adapters; few-shot and zero-shot training differ only in the learning rate.
    adam_betas: Tuple[float, float] = (0.5, 0.999)
    few_shot_learning_rate: float = 1e-3
    zero_shot_learning_rate: float = 1e-4
    epochs: int = 50
    # Zero-shot training scores the target this many times per epoch (every len(loader) // 5 steps).
    evaluations_per_epoch: int = 5
    seed: int = 111
    # The loss: focal loss with gamma 2 and one-hot targets clamped by 1e-5, Dice smoothed by 1.
    focal_gamma: float = 2.0
    focal_smooth: float = 1e-5
    dice_smooth: float = 1.0
    # A mask pixel is abnormal above this value (masks in [0, 1]): resized or JPEG-compressed masks
    # have grey values, and a 0.3 must not count.
    mask_threshold: float = 0.5


PAPER = MVFAConfig()

# How the frozen stream is adapted: MVFA's residual adapters, or the paper's Table 4 ablation
# (projectors of the frozen stream that feed nothing back).
ADAPTATIONS = ('adapter', 'projector')
# The precisions a model runs at (fp16/bf16: autocast, frozen weights stored so).
PRECISIONS = ('fp32', 'fp16', 'bf16')
# Which training state is kept: the best on the test set (the paper), on valid/, or the last.
SELECTION_MODES = ('test', 'valid', 'last')
# How fused test scores are normalised: over the test set (the authors'), or by the normal support images.
NORMALISATIONS = ('test', 'reference')
# The bootstrap intervals of a results file (mvfa/method/intervals.py): resamples and seed unless flags say otherwise.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
