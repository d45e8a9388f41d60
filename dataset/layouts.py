"""Where a data set keeps its images: BMAD, MVTec AD and VisA, detected from `--data_path`.

Torch-free, so that the flag checks and the synthetic generator can use it. Each layout lists,
for a category (`--obj`), the records (image, label, mask) of its test set, of its validation
set and of the two pools few-shot support images are drawn from:

- BMAD: `<data>/<Obj>_AD/{valid,test}/{good,Ungood}/img/*`, masks (Brain, Liver, Retina_RESC) in
  `.../Ungood/anomaly_mask/` under the image's file name. Support images come from `valid/`. Besides
  BMAD's six objects, any other `<Obj>_AD` folder there is an object too (with masks), as
  `python -m dataset.prepare` makes them from labelled volumes; zero-shot training on any object trains
  on the other BMAD objects (the paper's leave-one-out).
- MVTec AD: `<data>/<category>/train/good/*`, `test/good/*`, `test/<defect>/*`, masks in
  `ground_truth/<defect>/<stem>_mask.png`. Normal support images come from `train/good/`,
  abnormal ones from the test anomalies (the few-shot data set removes them from the test set).
  No validation split.
- VisA: `<data>/split_csv/1cls.csv` (columns object, split, label, image, mask; paths relative
  to `<data>`), as VisA's official split script writes it. Support as MVTec AD: normal from the
  `train` rows, abnormal from the `test` anomalies. No validation split. (VisA's MVTec-style
  export, `visa_pytorch/`, reads as MVTec AD.)
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvfa.common.errors import DataError

from .objects import ABNORMAL_FOLDER, NORMAL_FOLDER, OBJECTS, has_masks

IMAGE_SUFFIXES = ('.png', '.jpeg', '.jpg', '.bmp', '.tif', '.tiff')
NORMAL, ABNORMAL = 0, 1
VISA_SPLIT_CSV = Path('split_csv') / '1cls.csv'
VISA_COLUMNS = ('object', 'split', 'label', 'image', 'mask')


@dataclass(frozen=True)
class Record:
    """One image of a split: its label (NORMAL or ABNORMAL), its mask file (None: a normal image or a
    category without masks) and the name seed lists give it."""
    image: Path
    label: int
    mask: Optional[Path]
    name: str


def list_images(folder: Path) -> List[Path]:
    """Image files of a folder, sorted by name (the authors' test order)."""
    if not folder.is_dir():
        raise DataError(f'missing folder {folder}: the data set\'s layout needs it (see data/README.md)')
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    return images


# PIL modes of more than 8 bits per pixel (16-bit PNGs and TIFFs, 32-bit integer and float).
HIGH_DEPTH_MODES = ('I;16', 'I;16B', 'I;16L', 'I', 'F')


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


def _existing_mask(image: Path, mask: Path, rule: str) -> Path:
    if not mask.is_file():
        raise DataError(f'{image} has no mask: expected {mask} ({rule})')
    return mask


class Layout:
    """A data set's categories and, per category, its records. `name` is the data set's name in messages."""
    name = ''

    def __init__(self, root: Path) -> None:
        self.root = root

    def categories(self) -> Tuple[str, ...]:
        raise NotImplementedError

    def check(self, obj: str) -> str:
        """`obj` if it is a category of this data set, else a DataError listing those found."""
        found = self.categories()
        if obj not in found:
            raise DataError(f"unknown --obj '{obj}': the {self.name} data under {self.root} has "
                            f"{', '.join(found)}")
        return obj

    def has_masks(self, obj: str) -> bool:
        return True

    def other_categories(self, obj: str) -> List[str]:
        """What zero-shot training on `obj` trains on (leave-one-out): every other category."""
        others = [category for category in self.categories() if category != self.check(obj)]
        if not others:
            raise DataError(f'zero-shot training on {obj} needs other categories to train on; the {self.name} '
                            f'data under {self.root} has only {obj}')
        return others

    def test_records(self, obj: str) -> List[Record]:
        """The test set, normal images first."""
        raise NotImplementedError

    def validation_records(self, obj: str) -> List[Record]:
        raise DataError(f'{self.name} has no validation split: use --selection test or --selection last')

    def support_pool(self, obj: str, label: int) -> List[Record]:
        """The images k-shot support images of `label` are drawn from, in a fixed order."""
        raise NotImplementedError

    def support_source(self, obj: str, label: int) -> str:
        """Where `support_pool` comes from, for messages."""
        raise NotImplementedError


class BMAD(Layout):
    name = 'BMAD'

    def categories(self) -> Tuple[str, ...]:
        """BMAD's objects, then the other `<Obj>_AD` folders under the data path."""
        found = sorted(folder.name[:-len('_AD')] for folder in self.root.glob('*_AD') if folder.is_dir()) \
            if self.root.is_dir() else []
        return OBJECTS + tuple(obj for obj in found if obj not in OBJECTS)

    def check(self, obj: str) -> str:
        if obj not in self.categories():
            raise DataError(f"unknown --obj '{obj}': choose one of {', '.join(self.categories())}")
        return obj

    def other_categories(self, obj: str) -> List[str]:
        return [other for other in OBJECTS if other != self.check(obj)]

    def has_masks(self, obj: str) -> bool:
        return has_masks(obj)

    def object_root(self, obj: str) -> Path:
        root = self.root / f'{self.check(obj)}_AD'
        if not root.is_dir():
            raise DataError(f'{root} does not exist: put the BMAD {obj} data there (see data/README.md) '
                            f'or point --data_path at the folder that holds {obj}_AD')
        return root

    def _class_records(self, obj: str, split: str, label: int) -> List[Record]:
        folder = self.object_root(obj) / split / (ABNORMAL_FOLDER if label else NORMAL_FOLDER) / 'img'
        with_masks = label == ABNORMAL and self.has_masks(obj)
        # Masks share the file name of their image, in `anomaly_mask/` beside its `img/` folder.
        return [Record(image, label, _existing_mask(image, image.parent.parent / 'anomaly_mask' / image.name,
                                                    'segmentation objects need a mask for every Ungood image')
                       if with_masks else None, image.name)
                for image in list_images(folder)]

    def test_records(self, obj: str) -> List[Record]:
        return self._class_records(obj, 'test', NORMAL) + self._class_records(obj, 'test', ABNORMAL)

    def validation_records(self, obj: str) -> List[Record]:
        return self._class_records(obj, 'valid', NORMAL) + self._class_records(obj, 'valid', ABNORMAL)

    def support_pool(self, obj: str, label: int) -> List[Record]:
        return self._class_records(obj, 'valid', label)

    def support_source(self, obj: str, label: int) -> str:
        return str(self.root / f'{obj}_AD' / 'valid' / (ABNORMAL_FOLDER if label else NORMAL_FOLDER) / 'img')


class MVTecAD(Layout):
    """Seed lists name images by their path under the category folder, e.g. `test/crack/000.png`:
    MVTec AD's defect folders reuse file names."""
    name = 'MVTec AD'

    def categories(self) -> Tuple[str, ...]:
        return tuple(sorted(folder.name for folder in self.root.iterdir() if is_mvtec_category(folder)))

    def _records(self, obj: str, folder: Path, label: int) -> List[Record]:
        category = self.root / obj
        return [Record(image, label, self._mask(category, folder.name, image) if label else None,
                       image.relative_to(category).as_posix())
                for image in list_images(folder)]

    @staticmethod
    def _mask(category: Path, defect: str, image: Path) -> Path:
        """MVTec AD's `ground_truth/<defect>/<stem>_mask.png`, or `<stem>.png` as VisA's MVTec-style
        export (`visa_pytorch/`) names them."""
        folder = category / 'ground_truth' / defect
        plain = folder / f'{image.stem}.png'
        return plain if plain.is_file() else _existing_mask(
            image, folder / f'{image.stem}_mask.png', 'MVTec AD has a mask for every anomalous test image')

    def _defects(self, obj: str) -> List[Path]:
        test = self.root / self.check(obj) / 'test'
        return sorted(folder for folder in test.iterdir() if folder.is_dir() and folder.name != NORMAL_FOLDER)

    def test_records(self, obj: str) -> List[Record]:
        normal = self._records(obj, self.root / self.check(obj) / 'test' / NORMAL_FOLDER, NORMAL)
        return normal + [record for defect in self._defects(obj) for record in self._records(obj, defect, ABNORMAL)]

    def support_pool(self, obj: str, label: int) -> List[Record]:
        if label == NORMAL:
            return self._records(obj, self.root / self.check(obj) / 'train' / NORMAL_FOLDER, NORMAL)
        return [record for record in self.test_records(obj) if record.label == ABNORMAL]

    def support_source(self, obj: str, label: int) -> str:
        return str(self.root / obj / ('test/<defect>' if label else 'train/good'))


class VisA(Layout):
    """Seed lists name images by their path under the category folder, e.g. `Data/Images/Anomaly/000.JPG`."""
    name = 'VisA'

    @cached_property
    def rows(self) -> Dict[str, List[Dict[str, str]]]:
        """The split CSV's rows per category, each category's rows sorted by image path."""
        path = self.root / VISA_SPLIT_CSV
        with open(path, newline='', encoding='utf-8') as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in VISA_COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f'{path} lacks the columns {", ".join(missing)}: VisA\'s split CSV has '
                                f'{", ".join(VISA_COLUMNS)}')
            rows: Dict[str, List[Dict[str, str]]] = {}
            for row in reader:
                rows.setdefault(row['object'], []).append(row)
        return {obj: sorted(found, key=lambda row: row['image']) for obj, found in sorted(rows.items())}

    def categories(self) -> Tuple[str, ...]:
        return tuple(self.rows)

    def _records(self, obj: str, split: str, label: int) -> List[Record]:
        wanted = 'anomaly' if label else 'normal'
        records = []
        for row in self.rows[self.check(obj)]:
            if (row['split'], row['label']) != (split, wanted):
                continue
            image = self.root / row['image']
            if not image.is_file():
                raise DataError(f'{self.root / VISA_SPLIT_CSV} names {image}, which does not exist: unpack '
                                f'VisA into --data_path')
            mask = None
            if label:
                if not row['mask']:
                    raise DataError(f'{image} has no mask in {self.root / VISA_SPLIT_CSV}: VisA has a mask '
                                    f'for every anomalous image')
                mask = _existing_mask(image, self.root / row['mask'], f'named by {self.root / VISA_SPLIT_CSV}')
            category = self.root / obj
            name = image.relative_to(category) if image.is_relative_to(category) else image.relative_to(self.root)
            records.append(Record(image, label, mask, name.as_posix()))
        if not records:
            raise DataError(f'{self.root / VISA_SPLIT_CSV} has no {split} {wanted} image of {obj}')
        return records

    def test_records(self, obj: str) -> List[Record]:
        return self._records(obj, 'test', NORMAL) + self._records(obj, 'test', ABNORMAL)

    def support_pool(self, obj: str, label: int) -> List[Record]:
        return self._records(obj, 'test', ABNORMAL) if label else self._records(obj, 'train', NORMAL)

    def support_source(self, obj: str, label: int) -> str:
        return f'the {"test anomaly" if label else "train"} rows of {obj} in {self.root / VISA_SPLIT_CSV}'


def is_mvtec_category(folder: Path) -> bool:
    return (folder / 'train' / NORMAL_FOLDER).is_dir() and (folder / 'test').is_dir()


def detect_layout(data_path: str | Path) -> Layout:
    """VisA if `split_csv/1cls.csv` is there, MVTec AD if category folders with `train/good/` and
    `test/` are (and no `<Obj>_AD` folder), else BMAD (whose messages say what is missing)."""
    root = Path(data_path)
    if (root / VISA_SPLIT_CSV).is_file():
        return VisA(root)
    if not root.is_dir():
        return BMAD(root)
    folders = [folder for folder in root.iterdir() if folder.is_dir()]
    if any(folder.name.endswith('_AD') for folder in folders):
        return BMAD(root)
    if any(is_mvtec_category(folder) for folder in folders):
        return MVTecAD(root)
    if any((folder / 'Data' / 'Images').is_dir() for folder in folders):
        raise DataError(f'{root} holds VisA without {VISA_SPLIT_CSV}: the VisA download has it beside '
                        f'the category folders; put it at {root / VISA_SPLIT_CSV}')
    return BMAD(root)
