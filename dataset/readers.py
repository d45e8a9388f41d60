"""Images and masks as MVFA reads them, and the test and validation sets of a category.

The folder layouts (BMAD, MVTec AD, VisA) live in `dataset.layouts`; `--data_path` picks one.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from mvfa.common.config import PAPER

from .layouts import HIGH_DEPTH_MODES, IMAGE_SUFFIXES, DataError, Record, detect_layout, open_image, read_image

__all__ = ['DataError', 'IMAGE_SUFFIXES', 'MedTestDataset', 'ValidationSet', 'load_image', 'load_mask', 'open_image',
           'read_image']


def image_transform(img_size: int) -> transforms.Compose:
    """Resize with bicubic filtering and scale to [0, 1]; CLIP's mean/std are not applied, as in the paper."""
    return transforms.Compose([transforms.Resize((img_size, img_size), Image.BICUBIC), transforms.ToTensor()])


def load_image(path: Path, img_size: int) -> Tensor:
    return image_transform(img_size)(open_image(path))


def load_mask(path: Path, img_size: int) -> Tensor:
    """A (1, S, S) mask of 0 and 1; masks stored as 0/1, 0/255 or small labels (VisA) all work, in 8 or 16 bits."""
    raw = read_image(path)
    if raw.mode in HIGH_DEPTH_MODES:
        # Scaling a 16-bit 0/1 mask to 8 bits would erase it: any positive label is abnormal.
        mask = Image.fromarray((np.asarray(raw) > 0).astype(np.uint8) * 255)
    else:
        mask = raw.convert('L')
    if 0 < mask.getextrema()[1] < 128:
        # Labels rather than grey levels (0/1, or VisA's defect indices): any positive one is abnormal.
        mask = mask.point(lambda value: 255 if value else 0)
    resized = transforms.Resize((img_size, img_size), Image.NEAREST)(mask)
    return (transforms.functional.to_tensor(resized) > PAPER.mask_threshold).float()


class MedTestDataset(Dataset):
    """The test set of one category of the data set under `dataset_path` (BMAD, MVTec AD or VisA: see
    `dataset.layouts`): items (image, label, mask), normal images first.

    Normal images and classification objects get all-zero masks.
    """

    def __init__(self, dataset_path: str | Path = './data/', class_name: str = 'Brain',
                 resize: int = PAPER.img_size) -> None:
        self.class_name = class_name
        self.layout = detect_layout(dataset_path)
        self.resize = resize
        self.has_masks = self.layout.has_masks(self.layout.check(class_name))
        self.use(self.layout.test_records(class_name))

    def use(self, records: Sequence[Record]) -> None:
        """Make `records` the items: image files, labels and mask files (None: no mask)."""
        self.records = list(records)
        self.images: List[Path] = [record.image for record in records]
        self.labels: List[int] = [record.label for record in records]
        self.masks: List[Optional[Path]] = [record.mask for record in records]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Tensor]:
        image = load_image(self.images[index], self.resize)
        mask_file = self.masks[index]
        mask = load_mask(mask_file, self.resize) if mask_file else torch.zeros(1, self.resize, self.resize)
        return image, self.labels[index], mask


class ValidationSet(MedTestDataset):
    """The validation split of a category (BMAD's `valid/`) minus the given support images; items as
    MedTestDataset. MVTec AD and VisA have none: a DataError says so."""

    def __init__(self, dataset_path: str | Path, class_name: str, resize: int, support: Sequence[Path] = ()) -> None:
        super().__init__(dataset_path, class_name, resize)
        excluded = {Path(path).resolve() for path in support}
        kept = [record for record in self.layout.validation_records(class_name)
                if record.image.resolve() not in excluded]
        if {record.label for record in kept} != {0, 1}:
            raise DataError(f'the {class_name} validation split has no normal or no abnormal image left besides '
                            f'the support images: --selection valid needs both; use --selection last or test')
        self.use(kept)
