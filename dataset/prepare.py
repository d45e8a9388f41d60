"""Labelled volumes -> a benchmark in BMAD's layout, which train_few.py, test_few.py and test_zero.py read.

    python -m dataset.prepare --images scans/ --labels labels/ --obj Kidney --out data/ --window abdomen

`--images` holds NIfTI volumes (.nii, .nii.gz) or DICOM series (one folder each); `--labels` a NIfTI
label volume per image, named as the image (`case_01.nii.gz` or the folder `case_01/` -> `case_01.nii.gz`
or `.nii`), on the same voxel grid (shape and affine, compared in canonical orientation). Each volume is
cut along --axis and its intensities set by --window exactly as predict.py reads it (dataset/volumes.py):

- a slice with any label > 0 is abnormal (`Ungood/img`, its mask label > 0 in `Ungood/anomaly_mask`, 0/255),
  a slice without is normal (`good/img`);
- background rule: a slice whose share of pixels above the low end of the intensity range (8-bit value
  > 0: above the window's low end, or above the volume's low percentile) is under --min_foreground
  (default 10 %) is left out, normal or abnormal alike, so that the classes do not differ by how much
  background they show;
- split by volume (patient), never by slice: the volumes are shuffled with --seed and the first
  round(--valid_share x n) (at least 1) go to `valid/` (the few-shot support pool), the rest to `test/`.

Files: `<out>/<Obj>_AD/{valid,test}/{good,Ungood}/img/<volume>_<axis><slice>.png`, masks under the same
name, and `<out>/<Obj>_AD/split.json` (the rule, the seed, each volume's split, intensity and slice
counts) with `split.csv` (volume, label, split). The benchmark is written to a temporary folder beside
it and renamed when complete: a refused input leaves nothing behind.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from dataset.layouts import DataError
from dataset.objects import ABNORMAL_FOLDER, NORMAL_FOLDER
from dataset.volumes import Scan, canonical_affine, is_dicom, is_nifti, nifti_volume, read_dicom_series, \
    read_nifti, slice_image, stem, to_canonical
from mvfa.runs.cli import add_scan_arguments, run
from mvfa.common.flags import FlagParser

MIN_FOREGROUND = 0.10
VALID_SHARE = 0.25
SPLITS = ('valid', 'test')
# Canonical affines of an image and its label may differ by float rounding (float32 headers).
AFFINE_TOLERANCE_MM = 1e-3


def build_parser() -> FlagParser:
    p = FlagParser(description=__doc__, example='python -m dataset.prepare --images scans/ --labels labels/ '
                                                '--obj Kidney --out data/ --window abdomen')
    p.add_argument('--images', type=Path, required=True, help='folder of NIfTI volumes or DICOM series folders')
    p.add_argument('--labels', type=Path, required=True, help='folder of NIfTI label volumes, named as the images')
    p.add_argument('--obj', required=True, help='object name: the folder <Obj>_AD and the prompt text (--obj)')
    p.add_argument('--out', type=Path, required=True, help='data folder to put <Obj>_AD in (the --data_path)')
    add_scan_arguments(p)
    p.add('min_foreground', default=MIN_FOREGROUND)
    p.add('valid_share', default=VALID_SHARE)
    p.add('seed', help='seed of the shuffle that splits the volumes')
    return p


@dataclass
class Case:
    """An image volume, its label volume (canonical, on the image's grid) and the slices it gives."""
    name: str
    image: Path
    label: Path
    scan: Scan
    mask: np.ndarray
    split: str = ''
    slices: Dict[str, List[int]] = field(default_factory=lambda: {NORMAL_FOLDER: [], ABNORMAL_FOLDER: []})
    skipped: int = 0


def image_volumes(folder: Path) -> List[Path]:
    """NIfTI files and folders of DICOM files directly under `folder`, sorted."""
    if not folder.is_dir():
        raise DataError(f'--images {folder} is not a folder')
    found = sorted(p for p in folder.iterdir() if (p.is_file() and is_nifti(p))
                   or (p.is_dir() and any(is_dicom(f) for f in p.iterdir() if f.is_file())))
    if len(found) < 2:
        raise DataError(f'{folder} holds {len(found)} volumes (NIfTI files or DICOM series folders): the split by '
                        f'volume needs at least 2, one for valid/ and one for test/')
    return found


def label_file(labels: Path, image: Path) -> Path:
    for suffix in ('.nii.gz', '.nii'):
        candidate = labels / f'{stem(image)}{suffix}'
        if candidate.is_file():
            return candidate
    raise DataError(f'{image} has no label volume: expected {labels / stem(image)}.nii.gz (or .nii)')


def read_case(image: Path, labels: Path, args: argparse.Namespace) -> Case:
    label = label_file(labels, image)
    if image.is_dir():
        files = sorted(f for f in image.iterdir() if f.is_file() and is_dicom(f))
        scan = read_dicom_series(files, args.window, image)
    else:
        scan = read_nifti(image, args.window, args.frame)
    label_image, label_values = nifti_volume(label)
    mask = to_canonical(label_values, label_image.affine) > 0
    if mask.shape != scan.unit.shape:
        raise DataError(f'label {label} is {"x".join(map(str, mask.shape))} voxels, its image {image} '
                        f'{"x".join(map(str, scan.unit.shape))} (in canonical orientation): resample the label onto '
                        f'the image')
    offset = np.abs(canonical_affine(label_image.affine, label_values.shape)
                    - canonical_affine(scan.affine, scan.shape)).max()
    if offset > AFFINE_TOLERANCE_MM:
        raise DataError(f'label {label} lies elsewhere than its image {image}: their affines (canonical orientation) '
                        f'differ by up to {offset:.3g} mm; resample the label onto the image')
    return Case(stem(image), image, label, scan, mask)


def sort_slices(case: Case, axis: str, min_foreground: float) -> None:
    """Normal or abnormal by the label, or left out by the background rule (see the module docstring)."""
    for index in range(case.scan.slice_count(axis)):
        image = case.scan.image(axis, index)
        if np.mean(image > 0) < min_foreground:
            case.skipped += 1
            continue
        abnormal = slice_image(case.mask, axis, index).any()
        case.slices[ABNORMAL_FOLDER if abnormal else NORMAL_FOLDER].append(index)


def split_cases(cases: List[Case], valid_share: float, seed: int) -> None:
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    n_valid = min(len(cases) - 1, max(1, round(valid_share * len(cases))))
    for rank, index in enumerate(order):
        cases[index].split = 'valid' if rank < n_valid else 'test'
    for split in SPLITS:
        for folder in (NORMAL_FOLDER, ABNORMAL_FOLDER):
            if not any(case.slices[folder] for case in cases if case.split == split):
                raise DataError(f'the split (--seed {seed}, --valid_share {valid_share:g}) leaves {split}/ without '
                                f'{"abnormal" if folder == ABNORMAL_FOLDER else "normal"} slices: add volumes, or '
                                f'try another --seed or --valid_share')


def write_case(root: Path, case: Case, axis: str) -> None:
    for folder, indices in case.slices.items():
        images = root / case.split / folder / 'img'
        images.mkdir(parents=True, exist_ok=True)
        masks = root / case.split / folder / 'anomaly_mask'
        if folder == ABNORMAL_FOLDER:
            masks.mkdir(parents=True, exist_ok=True)
        for index in indices:
            name = f'{case.name}_{axis}{index:04d}.png'
            Image.fromarray(case.scan.image(axis, index), 'L').save(images / name)
            if folder == ABNORMAL_FOLDER:
                mask = slice_image(case.mask, axis, index).astype(np.uint8) * 255
                Image.fromarray(np.ascontiguousarray(mask), 'L').save(masks / name)


def write_split(root: Path, cases: List[Case], args: argparse.Namespace) -> None:
    record = {
        'obj': args.obj, 'axis': args.axis, 'window': args.window, 'seed': args.seed, 'valid_share': args.valid_share,
        'rule': {'abnormal': 'a slice with any label > 0', 'normal': 'a slice without',
                 'left_out': f'a slice with under {args.min_foreground:g} of its pixels above the intensity '
                             f"range's low end (8-bit value > 0)", 'split': 'by volume'},
        'volumes': [{'volume': str(case.image), 'label': str(case.label), 'split': case.split,
                     'normal_slices': len(case.slices[NORMAL_FOLDER]),
                     'abnormal_slices': len(case.slices[ABNORMAL_FOLDER]), 'left_out_slices': case.skipped,
                     'intensity': case.scan.intensity.record()} for case in cases],
    }
    (root / 'split.json').write_text(json.dumps(record, indent=2), encoding='utf-8')
    with open(root / 'split.csv', 'w', newline='', encoding='utf-8') as handle:
        writer = csv.writer(handle)
        writer.writerow(('volume', 'label', 'split'))
        writer.writerows((case.image, case.label, case.split) for case in cases)


def prepare(args: argparse.Namespace) -> Path:
    """Build `<out>/<Obj>_AD`; returns it. Every volume is read and checked before anything is written."""
    target = args.out / f'{args.obj}_AD'
    if target.exists():
        raise DataError(f'{target} exists: remove it or pick another --obj or --out')
    cases = [read_case(image, args.labels, args) for image in image_volumes(args.images)]
    for case in cases:
        sort_slices(case, args.axis, args.min_foreground)
    split_cases(cases, args.valid_share, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=args.out, prefix=f'.{target.name}.'))
    try:
        for case in cases:
            write_case(building, case, args.axis)
        write_split(building, cases, args)
        building.rename(target)
    finally:
        if building.exists():
            shutil.rmtree(building)
    counts = {split: {folder: sum(len(c.slices[folder]) for c in cases if c.split == split)
                      for folder in (NORMAL_FOLDER, ABNORMAL_FOLDER)} for split in SPLITS}
    print(f'{target}: ' + '; '.join(f'{split} {counts[split][NORMAL_FOLDER]} normal + '
                                    f'{counts[split][ABNORMAL_FOLDER]} abnormal slices' for split in SPLITS)
          + f' from {len(cases)} volumes ({sum(c.skipped for c in cases)} background slices left out); '
            f'split in {target / "split.json"}')
    return target


def main(argv: Optional[Sequence[str]] = None) -> Path:
    return prepare(build_parser().parse_args(argv))


if __name__ == '__main__':
    raise SystemExit(run(main))
