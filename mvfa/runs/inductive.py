"""`--normalisation reference`: test scores that depend on their own image alone (inductive scoring).

The authors min-max normalise every score array over the whole test set before fusing (transductive:
adding, removing or reordering other test images changes an image's score). Here each part is standardised
by the normal support images instead, with predict.py's machinery (`mvfa.runs.prediction.Reference`: one bank
per support image, spreads measured leave-one-out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from mvfa.runs.prediction import Calibration


@dataclass(frozen=True)
class Inductive:
    """Each part averaged over the `levels` and standardised by the reference images' spread of it, then
    fused with the config's weights; without references (zero-shot) the zero-shot part as it is. No
    statistic of the test set enters (`scoring.PerImageNormalisation`)."""
    levels: int
    calibration: Optional[Calibration] = None

    def fuse(self, zero: Tensor, few: Optional[Tensor], maps: bool) -> Tensor:
        zero = zero / self.levels
        if self.calibration is None or few is None:
            return zero
        c = self.calibration
        zero_spread, few_spread = (c.zero_map, c.few_map) if maps else (c.zero, c.few)
        return (c.zero_shot_weight * zero_spread.standardise(zero)
                + c.few_shot_weight * few_spread.standardise(few / self.levels))
