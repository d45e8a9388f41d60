"""A volume's outputs beside its per-slice rows: its score (the maximum over the scored slices, with that
slice's index) and its anomaly map as a NIfTI volume on the input's own voxel grid and affine, so that it
overlays on the scan in 3D Slicer or ITK-SNAP.

The map holds the per-pixel scores in the units of the image scores (the zero-shot probability, or
reference standard deviations), each slice's model map resized to the slice (bilinear, as the heatmap
PNGs) and put back where the slice came from; slices not scored (--slices) hold 0. A NIfTI input's map
keeps its header (qform and sform); a DICOM series' map has the series' geometry (its affine, from
ImageOrientationPatient, ImagePositionPatient and PixelSpacing, in RAS) and its SeriesInstanceUID in the
header's description; scores.json lists the series' identifiers and the files in slice order.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import nibabel as nib
import numpy as np

from dataset.volumes import AXES, Scan, from_canonical, image_plane, stem
from mvfa.common.outputs import atomic_write
from mvfa.runs.scan_inputs import InputImage

# NIfTI-1's description field holds 80 bytes.
DESCRIPTION_BYTES = 80


def map_image(scan: Scan, data: np.ndarray) -> nib.Nifti1Image:
    """A float32 NIfTI of `data` (on the scan's own grid) with the scan's affine (and a NIfTI input's header)."""
    header = scan.header.copy() if scan.header is not None else nib.Nifti1Header()
    image = nib.Nifti1Image(data.astype(np.float32), scan.affine, header=header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    uid = scan.identifiers.get('SeriesInstanceUID')
    description = f'MVFA anomaly map of {uid}' if uid else 'MVFA anomaly map'
    image.header['descrip'] = description.encode('ascii', 'replace')[:DESCRIPTION_BYTES]
    if scan.header is None:  # a DICOM series: the affine is its scanner geometry
        image.set_qform(scan.affine, code=1)
        image.set_sform(scan.affine, code=1)
    return image


def write_map(path: Path, scan: Scan, data: np.ndarray) -> None:
    """`map_image` to a .nii.gz file, written atomically."""
    image = map_image(scan, data)
    atomic_write(path, gzip.compress(image.to_bytes()))


class VolumeMaps:
    """Collects the scored slices of each volume input; `finish` writes the maps and returns their records."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.slices: Dict[int, Dict[int, np.ndarray]] = {}
        self.scores: Dict[int, Dict[int, float]] = {}
        self.scans: Dict[int, Scan] = {}
        self.axis: Dict[int, str] = {}

    def add(self, item: InputImage, score: float, pixel_scores: np.ndarray) -> None:
        """A slice of a volume: its image score and its (S, S) map of per-pixel scores."""
        key = id(item.scan)
        self.scans[key], self.axis[key] = item.scan, item.axis
        self.slices.setdefault(key, {})[item.index] = pixel_scores
        self.scores.setdefault(key, {})[item.index] = score

    def canonical_map(self, key: int) -> np.ndarray:
        scan, axis = self.scans[key], self.axis[key]
        volume = np.zeros(scan.unit.shape, dtype=np.float32)
        for index, pixel_scores in self.slices[key].items():
            where = [slice(None)] * 3
            where[AXES[axis]] = index
            width, height = volume[tuple(where)].shape  # the drawn slice is its plane transposed
            drawn = cv2.resize(pixel_scores.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            volume[tuple(where)] = image_plane(drawn)
        return volume

    def finish(self, names: Sequence[Path]) -> List[Dict]:
        """Write each volume's map to `names` (one per volume, in the order they were first added)."""
        records = []
        for key, path in zip(self.scans, names):
            scan = self.scans[key]
            write_map(path, scan, from_canonical(self.canonical_map(key), scan.affine))
            scores = self.scores[key]
            top = max(scores, key=lambda index: scores[index])
            records.append({'path': str(scan.path), 'axis': self.axis[key], 'slices': sorted(scores),
                            'score': scores[top], 'max_slice': top, 'map': str(path)})
        return records

    def __len__(self) -> int:
        return len(self.scans)

    def stems(self) -> List[str]:
        return [stem(scan.path) for scan in self.scans.values()]
