"""What predict.py scores: image files, DICOM files, DICOM series folders and NIfTI volumes, each cut into
the 2-D images the model reads (a volume: its slices along --axis, see dataset/volumes.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from dataset.layouts import IMAGE_SUFFIXES, DataError, open_image
from dataset.volumes import NIFTI_SUFFIXES, Scan, is_dicom, is_nifti, read_folder_series, read_scan, stem


@dataclass(frozen=True)
class InputImage:
    """One 2-D image to score: an image file (`scan` None), a DICOM file, or slice `index` of a volume."""
    path: Path
    scan: Optional[Scan] = None
    axis: str = 'axial'
    index: Optional[int] = None

    @property
    def name(self) -> str:
        """The stem of its heatmap: the file's stem, or the volume's with the axis and slice."""
        if self.scan is None:
            return self.path.stem
        return stem(self.path) if self.index is None else f'{stem(self.path)}_{self.axis}{self.index:04d}'

    def picture(self) -> Image.Image:
        """As the model reads it and the heatmap draws it: 8-bit RGB (a scan's grey level in all three)."""
        if self.scan is None:
            return open_image(self.path)
        return Image.fromarray(self.scan.image(self.axis, self.index or 0)).convert('RGB')


def slice_indices(spec: str, count: int, scan: Scan) -> range:
    """--slices START:STOP (either end may be empty) within a volume of `count` slices."""
    start_text, stop_text = spec.split(':')
    start, stop = int(start_text or 0), min(int(stop_text or count), count)
    if start >= stop:
        raise DataError(f'--slices {spec} selects no slice of {scan.path}, which has {count} along its axis: '
                        f'0..{count - 1}')
    return range(start, stop)


def _scans(path: Path, args: argparse.Namespace) -> List[Scan]:
    if path.is_dir():
        return read_folder_series(path, [p for p in sorted(path.iterdir()) if p.is_file() and is_dicom(p)],
                                  args.window)
    return [read_scan(path, args.window, args.frame)]


def _found(path: Path) -> List[Tuple[str, Path]]:
    """(kind, path) under a folder, recursively: 'image' files, 'scan' files (NIfTI) and 'series' folders
    (those holding DICOM files), in a stable order."""
    found: List[Tuple[str, Path]] = []
    files = sorted(p for p in path.iterdir() if p.is_file())
    if any(is_dicom(p) for p in files):
        found.append(('series', path))
    found += [('image', p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    found += [('scan', p) for p in files if is_nifti(p)]
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        found += _found(folder)
    return found


def find_inputs(paths: Sequence[Path], what: str, args: argparse.Namespace) -> Tuple[List[InputImage], List[Scan]]:
    """The 2-D images to score and the scans they come from. Every scan is read here, before anything is
    scored or written, so a bad one is reported at once."""
    found: List[Tuple[str, Path]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += _found(path)
        elif path.is_file():
            found.append(('scan' if is_nifti(path) or is_dicom(path) else 'image', path))
        else:
            raise DataError(f'{what} {path} does not exist')
    if not found:
        raise DataError(f'no {what} images ({", ".join(IMAGE_SUFFIXES + NIFTI_SUFFIXES)}, DICOM) in '
                        f'{", ".join(map(str, paths))}')
    images: List[InputImage] = []
    scans: List[Scan] = []
    for kind, path in found:
        if kind == 'image':
            images.append(InputImage(path))
            continue
        for scan in _scans(path, args):
            scans.append(scan)
            if not scan.is_volume:
                images.append(InputImage(scan.path, scan))
                continue
            indices = slice_indices(args.slices, scan.slice_count(args.axis), scan)
            images += [InputImage(scan.path, scan, args.axis, index) for index in indices]
    return images, scans
