"""Check a data set before any model is loaded, so a bad file costs seconds, not a lost run.

Every problem raises `DataError` with one line that names it and the fix: an unknown category,
a missing or empty folder, an abnormal image without a mask or with a mask of another size, an
image or mask that does not decode, a `--shot` larger than the support images, a seed list
that names missing files.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from .layouts import ABNORMAL, NORMAL, DataError, Layout, Record, detect_layout, read_image
from .objects import DEFAULT_SEED_DIR, seed_list_path
from .support import check_support_size, listed_support

# Above this many files a progress bar shows that the check is working (BrainMRI has 3715 test images).
PROGRESS_FROM = 200

ImageAndMask = Tuple[Path, Optional[Path]]


def _check_pair(pair: ImageAndMask) -> None:
    """Decode an image (and its mask): `read_image` names a file that does not decode."""
    image, mask = pair
    width, height = read_image(image).size
    if mask is not None:
        mask_width, mask_height = read_image(mask).size
        if (mask_width, mask_height) != (width, height):
            raise DataError(f'mask {mask} is {mask_width}x{mask_height} px but its image {image} is '
                            f'{width}x{height} px: give every mask the size of its image')


def _check_support(layout: Layout, obj: str, shot: int, iterate: Optional[int], seed_dir: Path,
                   pools: Dict[int, List[Record]]) -> None:
    """The k-shot support set can be drawn from the pools (by label): from the seed list if it is used,
    else at random."""
    if shot < 1:
        raise DataError(f'--shot must be a positive integer, got {shot}')
    seed_list = seed_list_path(seed_dir, obj, shot)
    for label, pool in pools.items():
        source = layout.support_source(obj, label)
        if listed_support(pool, source, shot, -1 if iterate is None else iterate, seed_list, label) is None:
            check_support_size(len(pool), shot, source)


def validate_object(data_path: str | Path, obj: str, img_size: Optional[int] = None, shot: Optional[int] = None,
                    iterate: Optional[int] = None, seed_dir: Optional[str | Path] = None,
                    normal_only: bool = False, decode: bool = True) -> int:
    """Check one category's data; returns how many image files were decoded (with `decode` False: found,
    the folders and the support set checked but no file opened, a check of seconds before long runs).

    The test set always; with a `shot`, the support pools too (BMAD: `valid/`; MVTec AD and VisA: the
    training images, the abnormal pool being part of the test set). With `normal_only` (a memory
    bank of normal images alone) the abnormal pool (BMAD: `valid/Ungood`) and the seed lists' `a-`
    lines are not needed.
    """
    if img_size is not None and img_size < 1:
        raise DataError(f'--img_size must be a positive integer, got {img_size}')
    layout = detect_layout(data_path)
    records = layout.test_records(layout.check(obj))
    if shot is not None:
        pools = {label: layout.support_pool(obj, label) for label in ((NORMAL,) if normal_only else (NORMAL, ABNORMAL))}
        records += [record for pool in pools.values() for record in pool]
        _check_support(layout, obj, shot, iterate, Path(seed_dir or DEFAULT_SEED_DIR), pools)
    files = list(dict.fromkeys((record.image, record.mask) for record in records))
    if not decode:
        return len(files)
    return decode_all(files, f'{obj} data')


def decode_all(files: Sequence[ImageAndMask], what: str) -> int:
    """Decode every image and its mask (None: none), checking their sizes agree; the first problem raises
    DataError. Returns how many files were decoded."""
    # Decoding is mostly outside the GIL, so threads help; map keeps the files' order for the first error,
    # after which the files not yet started are dropped.
    pool = ThreadPoolExecutor()
    try:
        for _ in tqdm(pool.map(_check_pair, files), total=len(files), desc=f'checking {what}',
                      leave=False, disable=len(files) <= PROGRESS_FROM):
            pass
    finally:
        pool.shutdown(cancel_futures=True)
    return sum(1 + (mask is not None) for _, mask in files)


def validate_leave_one_out(data_path: str | Path, target: str, img_size: Optional[int] = None,
                           decode: bool = True) -> int:
    """Zero-shot training reads the test sets of the target and of the other categories of its data set."""
    others = detect_layout(data_path).other_categories(target)
    return sum(validate_object(data_path, obj, img_size, decode=decode) for obj in [target] + others)
