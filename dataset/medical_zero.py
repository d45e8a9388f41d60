"""Zero-shot data: leave-one-out training on the test sets of the other categories of the same data set."""
from __future__ import annotations

import random
from pathlib import Path
from typing import List, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mvfa.common.config import PAPER

from .readers import MedTestDataset
from .layouts import detect_layout

__all__ = ['MedTestDataset', 'MedTrainDataset']


class MedTrainDataset(Dataset):
    """The test sets of every category of the data set but `class_name` (BMAD: the five other objects;
    MVTec AD, VisA: the other categories under `dataset_path`); items (image, label, mask, source index).

    `source index` indexes `self.sources`, so the training loop can use that object's text
    features and know whether it has masks. Batches never mix objects: use `batches()`.
    """

    def __init__(self, dataset_path: str | Path = './data/', class_name: str = 'Brain',
                 resize: int = PAPER.img_size) -> None:
        self.sources = detect_layout(dataset_path).other_categories(class_name)
        self.splits = [MedTestDataset(dataset_path, obj, resize) for obj in self.sources]
        self.items = [(source, index) for source, split in enumerate(self.splits) for index in range(len(split))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Tensor, int]:
        source, item = self.items[index]
        image, label, mask = self.splits[source][item]
        return image, label, mask, source

    def batches(self, batch_size: int, rng: random.Random) -> List[List[int]]:
        """One epoch of batches, as the authors form them: each object's images shuffled and cut
        into batches, then all batches shuffled together."""
        batches = []
        start = 0
        for split in self.splits:
            order = list(range(start, start + len(split)))
            rng.shuffle(order)
            batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            start += len(split)
        rng.shuffle(batches)
        return batches


def stack_batch(items: List[Tuple[Tensor, int, Tensor, int]]) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Collate one object's items: images, float labels, masks and the shared source index."""
    images, labels, masks, sources = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.float32), torch.stack(masks), sources[0]
