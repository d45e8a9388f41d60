"""Few-shot data: the test split plus k abnormal and k normal support images from `valid/`."""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .bmad import (ABNORMAL, NORMAL, DataError, MedTestDataset, list_images, load_image, load_mask,
                   mask_path)

DEFAULT_SEED_DIR = Path(__file__).resolve().parent / 'fewshot_seed'


def seed_list_path(seed_dir: str | Path, obj: str, shot: int) -> Path:
    return Path(seed_dir) / obj / f'{shot}-shot.txt'


def read_seed_list(path: Path, kind: str, iterate: int) -> List[str]:
    """The file names on the `<kind>-<iterate>:` line of a seed list (kind 'a' abnormal, 'n' normal)."""
    tag = f'{kind}-{iterate}:'
    with open(path, encoding='utf-8') as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == tag:
                return fields[1:]
    raise DataError(f"{path} has no line '{tag}': pick an --iterate that the file lists")


class MedDataset(MedTestDataset):
    """The test split of `class_name` (items as MedTestDataset) and its few-shot support set.

    Support images are named by `<seed_dir>/<Obj>/<shot>-shot.txt` (line `n-<iterate>:` /
    `a-<iterate>:`). With `iterate` < 0, or when that file is missing, they are drawn with
    `random.sample` (seed it first), the latter with a warning.
    Attributes: `fewshot_norm_img` (k, 3, S, S), `fewshot_abnorm_img` (k, 3, S, S) and
    `fewshot_abnorm_mask` (k, 1, S, S), None for classification objects. With `normal_only`
    no abnormal support is drawn (both abnormal attributes are None): the memory bank needs
    normal images alone, so `valid/Ungood` and the seed lists' `a-` lines may be missing.
    """

    def __init__(self, dataset_path: str | Path = './data/', class_name: str = 'Brain', resize: int = 240,
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
                          f'images at random (seeded)', stacklevel=2)
        # The files drawn, so that model selection on valid/ can leave them out.
        self.support_images: List[Path] = []
        # Normal images are drawn first, as in the authors' code, so seeded draws match theirs.
        self.fewshot_norm_img, _ = self._support(NORMAL, 'n')
        self.fewshot_abnorm_img, self.fewshot_abnorm_mask = (
            (None, None) if normal_only else self._support(ABNORMAL, 'a'))

    def _pick(self, folder: Path, kind: str) -> List[Path]:
        available = list_images(folder)
        if self.iterate >= 0 and self.seed_list.is_file():
            names = read_seed_list(self.seed_list, kind, self.iterate)[:self.shot]
            chosen = [folder / name for name in names]
            missing = [str(p) for p in chosen if not p.is_file()]
            if missing:
                raise DataError(f'{self.seed_list} names images that do not exist: {", ".join(missing)}')
        else:
            chosen = random.sample(available, min(self.shot, len(available)))
        if len(chosen) < self.shot:
            raise DataError(f'--shot {self.shot} needs {self.shot} support images in {folder}, '
                            f'found {len(chosen)}: use a smaller --shot')
        return chosen

    def _support(self, label: str, kind: str) -> Tuple[Tensor, Optional[Tensor]]:
        chosen = self._pick(self.root / 'valid' / label / 'img', kind)
        self.support_images += chosen
        images = torch.stack([load_image(p, self.resize) for p in chosen])
        if label == NORMAL or not self.seg_flag:
            return images, None
        return images, torch.stack([load_mask(mask_path(p), self.resize) for p in chosen])
