"""The BMAD benchmark as MVFA reads it: objects, folder layout, image loading, the test split.

Layout: `<data>/<Obj>_AD/{valid,test}/{good,Ungood}/img/*`, masks of abnormal images of the
segmentation objects in `.../Ungood/anomaly_mask/` under the same file names.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from mvfa.errors import UserError

from .objects import ABNORMAL_FOLDER, NORMAL_FOLDER, OBJECTS, has_masks

IMAGE_SUFFIXES = ('.png', '.jpeg', '.jpg', '.bmp', '.tif', '.tiff')
# PIL modes of more than 8 bits per pixel (16-bit PNGs and TIFFs, 32-bit integer and float).
HIGH_DEPTH_MODES = ('I;16', 'I;16B', 'I;16L', 'I', 'F')


class DataError(UserError):
    """The data set is not as MVFA expects; the message names the problem and the fix."""


def check_object(obj: str) -> str:
    if obj not in OBJECTS:
        raise DataError(f"unknown --obj '{obj}': choose one of {', '.join(OBJECTS)}")
    return obj


def object_root(data_path: str | Path, obj: str) -> Path:
    root = Path(data_path) / f'{check_object(obj)}_AD'
    if not root.is_dir():
        raise DataError(f'{root} does not exist: put the BMAD {obj} data there (see data/README.md) '
                        f'or point --data_path at the folder that holds {obj}_AD')
    return root


def list_images(folder: Path) -> List[Path]:
    """Image files of a folder, sorted by name (the authors' test order)."""
    if not folder.is_dir():
        raise DataError(f'missing folder {folder}: the BMAD layout needs it (see data/README.md)')
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    return images


def mask_path(image: Path) -> Path:
    """Where the mask of an abnormal image lives: `anomaly_mask/` beside its `img/` folder."""
    mask = image.parent.parent / 'anomaly_mask' / image.name
    if not mask.is_file():
        raise DataError(f'{image} has no mask: expected {mask} (segmentation objects need a mask '
                        f'for every Ungood image)')
    return mask


def read_image(path: Path) -> Image.Image:
    """An image file decoded as stored; a file that does not decode is named."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(f'cannot read image {path} ({error}): replace or remove the file') from None
    return image


def open_image(path: Path) -> Image.Image:
    """An image as 8-bit RGB: 16-bit and float images are scaled to 8 bits first, alpha is dropped."""
    image = read_image(path)
    if image.mode in HIGH_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if image.mode.startswith('I;16') or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert('RGB')


def image_transform(img_size: int) -> transforms.Compose:
    """Resize with bicubic filtering and scale to [0, 1]; CLIP's mean/std are not applied, as in the paper."""
    return transforms.Compose([transforms.Resize((img_size, img_size), Image.BICUBIC), transforms.ToTensor()])


def load_image(path: Path, img_size: int) -> Tensor:
    return image_transform(img_size)(open_image(path))


def load_mask(path: Path, img_size: int) -> Tensor:
    """A (1, S, S) mask of 0 and 1; masks stored as 0/1 and as 0/255 both work, in 8 or 16 bits."""
    raw = read_image(path)
    if raw.mode in HIGH_DEPTH_MODES:
        # Scaling a 16-bit 0/1 mask to 8 bits would erase it: any positive label is abnormal.
        mask = Image.fromarray((np.asarray(raw) > 0).astype(np.uint8) * 255)
    else:
        mask = raw.convert('L')
    if mask.getextrema()[1] == 1:
        mask = mask.point(lambda value: value * 255)
    resized = transforms.Resize((img_size, img_size), Image.NEAREST)(mask)
    return (transforms.functional.to_tensor(resized) > 0.5).float()


class MedTestDataset(Dataset):
    """The `test/` split of one object: items (image, label, mask), normal images first.

    Normal images and classification objects get all-zero masks.
    """

    def __init__(self, dataset_path: str | Path = './data/', class_name: str = 'Brain', resize: int = 240) -> None:
        self.class_name = class_name
        self.root = object_root(dataset_path, class_name)
        self.resize = resize
        self.has_masks = has_masks(class_name)
        self.images, self.labels, self.masks = self.list_split('test')

    def list_split(self, split: str) -> Tuple[List[Path], List[int], List[Optional[Path]]]:
        """Image files, labels and mask files (None: no mask) of a split, normal images first."""
        normal = list_images(self.root / split / NORMAL_FOLDER / 'img')
        abnormal = list_images(self.root / split / ABNORMAL_FOLDER / 'img')
        masks = [mask_path(p) if self.has_masks else None for p in abnormal]
        return normal + abnormal, [0] * len(normal) + [1] * len(abnormal), [None] * len(normal) + masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, int, Tensor]:
        image = load_image(self.images[index], self.resize)
        mask_file = self.masks[index]
        mask = load_mask(mask_file, self.resize) if mask_file else torch.zeros(1, self.resize, self.resize)
        return image, self.labels[index], mask


class ValidationSet(MedTestDataset):
    """The `valid/` split of an object minus the given support images; items as MedTestDataset."""

    def __init__(self, dataset_path: str | Path, class_name: str, resize: int, support: Sequence[Path] = ()) -> None:
        super().__init__(dataset_path, class_name, resize)
        excluded = {Path(path).resolve() for path in support}
        kept = [item for item in zip(*self.list_split('valid')) if item[0].resolve() not in excluded]
        labels = {label for _, label, _ in kept}
        if labels != {0, 1}:
            raise DataError(f'{self.root / "valid"} has no normal or no abnormal image left besides the '
                            f'support images: --selection valid needs both; use --selection last or test')
        self.images, self.labels, self.masks = (list(column) for column in zip(*kept))
