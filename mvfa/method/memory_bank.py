"""The few-shot memory bank: the adapter tokens of the augmented normal support images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa.method import scoring


@dataclass
class MemoryBank:
    """Per level, the normalised seg and det tokens (class tokens included) of the normal images."""
    seg: List[Tensor]
    det: List[Tensor]

    def patch_distances(self, head: str, level: int, patches: Tensor) -> Tensor:
        """(B, L, C) patches -> (B, L): 1 - cosine similarity to the nearest token of the bank."""
        bank = getattr(self, head)[level]
        return 1.0 - scoring.nearest_similarity(patches.reshape(-1, patches.shape[-1]), bank).reshape(
            patches.shape[:2])


@torch.inference_mode()
def build_memory_bank(model: MultiLevelAdaptedCLIP, inputs: Tensor, batch_size: int,
                      from_streams: bool = False) -> MemoryBank:
    """The bank of the augmented normal support images, or of their `frozen_stream`s (`from_streams`)."""
    tokens = model.adapter_tokens_from_stream if from_streams else model.adapter_tokens
    seg_tokens: List[List[Tensor]] = [[] for _ in model.features]
    det_tokens: List[List[Tensor]] = [[] for _ in model.features]
    for start in range(0, len(inputs), batch_size):
        with model.autocast():
            seg, det = tokens(inputs[start:start + batch_size].to(model.device))
        for level, (s, d) in enumerate(zip(seg, det)):
            seg_tokens[level].append(s)
            det_tokens[level].append(d)
    return MemoryBank([scoring.normalised_bank(t) for t in seg_tokens],
                      [scoring.normalised_bank(t) for t in det_tokens])
