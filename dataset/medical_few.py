"""Few-shot data: the test split plus k abnormal and k normal support images from `valid/`."""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .bmad import DataError, MedTestDataset, list_images, load_image, load_mask, mask_path
from .objects import ABNORMAL_FOLDER, DEFAULT_SEED_DIR, NORMAL_FOLDER


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


def listed_support(folder: Path, shot: int, iterate: int, seed_list: Path, label: str) -> Optional[List[Path]]:
    """The `shot` support images of `folder` that the seed list names on its line for `label` and
    `iterate`, checked to exist; None when they are drawn at random instead (`iterate` < 0 or no list)."""
    if iterate < 0 or not seed_list.is_file():
        return None
    kind = 'n' if label == NORMAL_FOLDER else 'a'
    chosen = [folder / name for name in read_seed_list(seed_list, kind, iterate)[:shot]]
    missing = [path.name for path in chosen if not path.is_file()]
    if missing:
        raise DataError(f'{seed_list} line {kind}-{iterate} names images missing from {folder}: '
                        f'{", ".join(missing)}; fix the list or pass --fewshot_seed_dir')
    check_support_size(len(chosen), shot, f'{seed_list} line {kind}-{iterate}')
    return chosen


def check_support_size(found: int, shot: int, source: str) -> None:
    if found < shot:
        raise DataError(f'--shot {shot} needs {shot} support images, {source} has {found}: use a smaller --shot')


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
        self.fewshot_norm_img, _ = self._support(NORMAL_FOLDER)
        self.fewshot_abnorm_img, self.fewshot_abnorm_mask = (
            (None, None) if normal_only else self._support(ABNORMAL_FOLDER))

    def _pick(self, folder: Path, label: str) -> List[Path]:
        chosen = listed_support(folder, self.shot, self.iterate, self.seed_list, label)
        if chosen is None:
            available = list_images(folder)
            check_support_size(len(available), self.shot, str(folder))
            chosen = random.sample(available, self.shot)
        return chosen

    def _support(self, label: str) -> Tuple[Tensor, Optional[Tensor]]:
        chosen = self._pick(self.root / 'valid' / label / 'img', label)
        self.support_images += chosen
        images = torch.stack([load_image(p, self.resize) for p in chosen])
        if label == NORMAL_FOLDER or not self.has_masks:
            return images, None
        return images, torch.stack([load_mask(mask_path(p), self.resize) for p in chosen])
