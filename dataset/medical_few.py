"""Few-shot data: the test set plus k abnormal and k normal support images (BMAD: from `valid/`)."""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from mvfa.common.config import PAPER
from mvfa.common.errors import Notice

from .readers import DataError, MedTestDataset, load_image, load_mask
from .layouts import ABNORMAL, NORMAL, Layout, Record
from .objects import DEFAULT_SEED_DIR, seed_list_path
from .support import check_support_size, listed_support


def draw_support(layout: Layout, obj: str, label: int, shot: int, iterate: int, seed_list: Path) -> List[Record]:
    """The support images of `label`: the seed list's, else `random.sample` of the pool (seed it first)."""
    pool = layout.support_pool(obj, label)
    source = layout.support_source(obj, label)
    chosen = listed_support(pool, source, shot, iterate, seed_list, label)
    if chosen is None:
        check_support_size(len(pool), shot, source)
        chosen = random.sample(pool, shot)
    return chosen


class MedDataset(MedTestDataset):
    """The test set of `class_name` (items as MedTestDataset) and its few-shot support set.

    Support images come from the layout's pools (BMAD: `valid/`; MVTec AD and VisA: normal ones
    from the training images, abnormal ones from the test set, which then leave the test set).
    They are named by `<seed_dir>/<Obj>/<shot>-shot.txt` (line `n-<iterate>:` / `a-<iterate>:`).
    With `iterate` < 0, or when that file is missing, they are drawn with `random.sample` (seed it
    first), the latter with a warning.
    Attributes: `fewshot_norm_img` (k, 3, S, S), `fewshot_abnorm_img` (k, 3, S, S) and
    `fewshot_abnorm_mask` (k, 1, S, S), None for classification objects. With `normal_only`
    no abnormal support is drawn (both abnormal attributes are None): the memory bank needs
    normal images alone, so `valid/Ungood` and the seed lists' `a-` lines may be missing.
    """

    def __init__(self, dataset_path: str | Path = './data/', class_name: str = 'Brain', resize: int = PAPER.img_size,
                 shot: int = 4, iterate: int = -1, seed_dir: str | Path = DEFAULT_SEED_DIR,
                 normal_only: bool = False) -> None:
        super().__init__(dataset_path, class_name, resize)
        if shot < 1:
            raise DataError(f'--shot must be a positive integer, got {shot}')
        self.shot = shot
        self.iterate = iterate
        self.seed_list = seed_list_path(seed_dir, class_name, shot)
        if iterate >= 0 and not self.seed_list.is_file():
            warnings.warn(f'no few-shot seed list {self.seed_list}: drawing the {shot}-shot support '
                          f'images at random (seeded)', Notice)
        # The files drawn, so that model selection on valid/ can leave them out.
        self.support_images: List[Path] = []
        # Normal images are drawn first, as in the authors' code, so seeded draws match theirs.
        self.fewshot_norm_img, _ = self._support(NORMAL)
        self.fewshot_abnorm_img, self.fewshot_abnorm_mask = (None, None) if normal_only else self._support(ABNORMAL)
        # A support image is never scored (MVTec AD and VisA draw abnormal ones from the test set).
        support = set(self.support_images)
        self.use([record for record in self.records if record.image not in support])

    def _support(self, label: int) -> Tuple[Tensor, Optional[Tensor]]:
        chosen = draw_support(self.layout, self.class_name, label, self.shot, self.iterate, self.seed_list)
        self.support_images += [record.image for record in chosen]
        images = torch.stack([load_image(record.image, self.resize) for record in chosen])
        if label == NORMAL or not self.has_masks:
            return images, None
        return images, torch.stack([load_mask(record.mask, self.resize) for record in chosen])
