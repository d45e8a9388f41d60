"""The BMAD benchmark's objects and folder names: one definition, torch-free (the synthetic data uses it)."""
from __future__ import annotations

from pathlib import Path

OBJECTS = ('Brain', 'Liver', 'Retina_RESC', 'Retina_OCT2017', 'Chest', 'Histopathology')
# Objects whose abnormal images come with pixel masks (the others are image-level only).
OBJECTS_WITH_MASKS = ('Brain', 'Liver', 'Retina_RESC')
# Class folders of every split: normal and abnormal images (the authors' spelling).
NORMAL_FOLDER, ABNORMAL_FOLDER = 'good', 'Ungood'
# The authors' few-shot seed lists, <Obj>/<k>-shot.txt.
DEFAULT_SEED_DIR = Path(__file__).resolve().parent / 'fewshot_seed'


def has_masks(obj: str) -> bool:
    """Whether `obj`'s abnormal images have pixel masks: BMAD's image-level objects have none; every
    other category (BMAD's segmentation objects, MVTec AD's and VisA's) has one per abnormal image."""
    return obj in OBJECTS_WITH_MASKS or obj not in OBJECTS


def seed_list_path(seed_dir: str | Path, obj: str, shot: int) -> Path:
    """The seed list of `obj`'s k-shot support draws, in the authors' layout."""
    return Path(seed_dir) / obj / f'{shot}-shot.txt'
