"""DICOM files, DICOM series and NIfTI volumes read as MVFA scores them: torch-free (pydicom, nibabel, numpy).

Orientation. A volume is turned into nibabel's closest canonical orientation, RAS+ (voxel axis 0 towards
the patient's right, 1 anterior, 2 superior: `nibabel.as_closest_canonical`), and cut along one of its
axes (axial: axis 2, coronal: 1, sagittal: 0). A slice is drawn in the radiological convention, as
3D Slicer, ITK-SNAP and a DICOM viewer show it by default: axial and coronal slices with the patient's
right on the image's left, axial with anterior at the top, coronal and sagittal with superior at the
top, sagittal with anterior on the left. For the canonical array that is one rule for every axis: the
slice's two remaining axes (a, b) give the image `plane.T[::-1, ::-1]` (rows run down b, columns
down a). A slice's index counts along the canonical axis: from the inferior (axial), posterior
(coronal) or left (sagittal) end. A single DICOM file is drawn as stored, which for an axial slice
with the usual orientation (rows left to right, columns front to back) is the same convention.

DICOM series. The files of a folder that share a SeriesInstanceUID are one volume (one file alone is a
2-D image). Slices are ordered by ImagePositionPatient projected on the slice normal, the cross product
of the two ImageOrientationPatient directions, not by file name; the spacing along the normal must be
the same between all neighbours (a missing or duplicate position is refused). The volume's affine
maps DICOM's LPS patient coordinates to NIfTI's RAS, as dcm2niix and nibabel do.

Intensities (dataset/windows.py): CT in Hounsfield units (the modality LUT: RescaleSlope and
RescaleIntercept), then a window; MR and NIfTI by the volume's percentile range; MONOCHROME1 inverted.
Slices are quantised to 8 bits, as the PNGs of the benchmark builder (`dataset/prepare.py`) hold
them, so a volume's slice scores as the PNG made of it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pydicom
import pydicom.uid
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from .layouts import DataError
from .windows import Intensity, to_unit

NIFTI_SUFFIXES = ('.nii', '.nii.gz')
DICOM_SUFFIX = '.dcm'
AXES = {'sagittal': 0, 'coronal': 1, 'axial': 2}
RAS = axcodes2ornt(('R', 'A', 'S'))
# Slice positions closer than this (mm) are one position; spacings that differ by more than this share of
# the series' spacing mean a missing slice.
SAME_POSITION_MM, SPACING_TOLERANCE = 1e-3, 0.05
# What to install for a compressed transfer syntax whose decoder is missing (pydicom's pixel data plugins).
DECODERS = (
    (pydicom.uid.JPEGLSTransferSyntaxes, 'pylibjpeg pylibjpeg-libjpeg (or pyjpegls)'),
    (pydicom.uid.JPEG2000TransferSyntaxes, 'pylibjpeg pylibjpeg-openjpeg'),
    (pydicom.uid.JPEGTransferSyntaxes, 'pylibjpeg pylibjpeg-libjpeg'),
    (pydicom.uid.RLETransferSyntaxes, 'pylibjpeg pylibjpeg-rle'),
)
# Identifiers a DICOM input's outputs carry so they can be matched back to it (no patient names or IDs).
DICOM_IDENTIFIERS = ('StudyInstanceUID', 'SeriesInstanceUID', 'FrameOfReferenceUID', 'SeriesNumber', 'Modality',
                     'SeriesDescription')


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """A .dcm file, or a file with DICOM's 'DICM' marker after its 128-byte preamble."""
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    try:
        with open(path, 'rb') as handle:
            return handle.read(132)[128:] == b'DICM'
    except OSError:
        return False


def stem(path: Path) -> str:
    """A scan's name without .nii, .nii.gz or .dcm."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, DICOM_SUFFIX):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


@dataclass
class Scan:
    """A DICOM or NIfTI input read for scoring.

    `unit`: the voxels in [0, 1] (after rescale, window or percentile range, MONOCHROME1 inversion),
    (X, Y, Z) in canonical RAS for a volume, (rows, columns) as stored for a single DICOM file.
    `affine` and `shape`: the input's own voxel grid (a DICOM series: columns, rows, slices in
    position order), which the anomaly map is written on; `header`: a NIfTI input's, copied to it."""
    path: Path
    kind: str  # 'nifti', 'dicom series' or 'dicom'
    unit: np.ndarray
    intensity: Intensity
    modality: Optional[str] = None
    affine: Optional[np.ndarray] = None
    shape: Optional[Tuple[int, ...]] = None
    header: Optional[nib.Nifti1Header] = None
    identifiers: Dict[str, str] = field(default_factory=dict)
    files: List[Path] = field(default_factory=list)

    @property
    def is_volume(self) -> bool:
        return self.kind != 'dicom'

    def slice_count(self, axis: str) -> int:
        return self.unit.shape[AXES[axis]] if self.is_volume else 1

    def image(self, axis: str, index: int) -> np.ndarray:
        """The 2-D slice `index` along `axis`, as a viewer shows it (see the module docstring), as 8-bit grey."""
        plane = slice_image(self.unit, axis, index) if self.is_volume else self.unit
        return to_uint8(plane)

    def record(self) -> Dict:
        """What scores.json says of the input."""
        return {'path': str(self.path), 'kind': self.kind, 'modality': self.modality,
                'intensity': self.intensity.record(), 'shape': None if self.shape is None else list(self.shape),
                'affine': None if self.affine is None else np.round(self.affine, 6).tolist(),
                'identifiers': self.identifiers}


def to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def slice_image(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """Slice `index` along `axis` of a canonical (RAS) volume, drawn in the radiological convention."""
    return np.take(volume, index, axis=AXES[axis]).T[::-1, ::-1]


def image_plane(image: np.ndarray) -> np.ndarray:
    """The inverse of `slice_image` for one slice: a drawn (rows, columns) image back to the volume's plane."""
    return image[::-1, ::-1].T


def to_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return apply_orientation(data, io_orientation(affine))


def canonical_affine(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The affine of the canonical array `to_canonical` makes (nibabel.as_closest_canonical's)."""
    return affine @ inv_ornt_aff(io_orientation(affine), shape[:3])


def from_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A canonical (RAS) array back on the voxel grid of `affine`."""
    return apply_orientation(data, ornt_transform(RAS, io_orientation(affine)))


def read_nifti(path: Path, window: str, frame: Optional[int] = None) -> Scan:
    """A NIfTI volume (3-D; a 4-D one needs `frame`) in canonical orientation, its values by `window`."""
    image, values = nifti_volume(path, frame)
    unit, intensity = to_unit(to_canonical(values, image.affine), window, None, None)
    if window == 'auto' and values.min() <= -1000:
        intensity = replace(intensity, source=f'{intensity.source} (values down to {values.min():g}: if this is '
                                              f'a CT in HU, pass --window PRESET)')
    return Scan(path, 'nifti', unit, intensity, affine=image.affine, shape=values.shape, header=image.header)


def nifti_volume(path: Path, frame: Optional[int] = None) -> Tuple[nib.Nifti1Image, np.ndarray]:
    """A NIfTI file and its 3-D voxel values (scaled by the header's slope and intercept) on its own grid."""
    try:
        image = nib.load(path)
        shape = image.shape
    except Exception as error:  # nibabel raises many kinds for a file that is no NIfTI or is truncated
        raise DataError(f'cannot read NIfTI {path} ({type(error).__name__}: {error}): replace or remove it') from None
    shape = tuple(shape) + (1,) * max(0, 3 - len(shape))
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        if frame is None:
            raise DataError(f'{path} is 4-D ({"x".join(map(str, shape))}: {shape[3]} volumes): pick one with '
                            f'--frame 0..{shape[3] - 1}')
        if not 0 <= frame < shape[3]:
            raise DataError(f'--frame {frame} is not a volume of {path}, which has {shape[3]}: 0..{shape[3] - 1}')
    elif len(shape) > 4:
        raise DataError(f'{path} has {len(shape)} dimensions ({"x".join(map(str, shape))}): MVFA reads 3-D volumes '
                        f'and 4-D series of them')
    try:
        values = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as error:
        raise DataError(f'cannot read the voxels of {path} ({type(error).__name__}: {error}): the file is damaged '
                        f'or truncated') from None
    return image, values[..., frame] if len(shape) == 4 else values


def read_dicom(path: Path, pixels: bool = True) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise DataError(f'cannot read DICOM {path} ({error}): replace or remove it') from None


def dicom_values(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """A single-frame greyscale DICOM's pixels in its modality's units (CT: HU, by RescaleSlope and
    RescaleIntercept or a modality LUT)."""
    if not any(tag in dataset for tag in ('PixelData', 'FloatPixelData', 'DoubleFloatPixelData')):
        kind = dataset.get('Modality') or 'object'
        raise DataError(f'{path} has no pixel data (a DICOM {kind} without an image): score the image files of the '
                        f'study instead')
    if int(dataset.get('NumberOfFrames', 1) or 1) > 1:
        raise DataError(f'{path} is a multi-frame DICOM ({dataset.NumberOfFrames} frames): MVFA reads single-frame '
                        f'files and series of them; convert it to NIfTI (e.g. with dcm2nix)')
    if int(dataset.get('SamplesPerPixel', 1)) != 1:
        raise DataError(f'{path} is a colour DICOM ({dataset.get("PhotometricInterpretation")}): MVFA reads '
                        f'greyscale CT, MR and X-ray; export it as PNG to score it as an image')
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises RuntimeError, NotImplementedError or ValueError by plugin
        syntax = dataset.file_meta.get('TransferSyntaxUID')
        if syntax is not None and syntax.is_compressed:
            package = next((package for syntaxes, package in DECODERS if syntax in syntaxes), None)
            install = f'pip install {package}' if package else "install a pydicom pixel data plugin for it"
            raise DataError(f'{path} is compressed as {syntax.name} and no decoder for it is installed: {install}') \
                from None
        raise DataError(f'cannot decode the pixels of {path} ({type(error).__name__}: {error})') from None
    return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float32)


def file_window(dataset: pydicom.Dataset) -> Optional[Tuple[float, float]]:
    """The DICOM's first WindowCenter / WindowWidth pair, if it has one."""
    if 'WindowCenter' not in dataset or 'WindowWidth' not in dataset:
        return None
    first = [value[0] if isinstance(value, pydicom.multival.MultiValue) else value
             for value in (dataset.WindowCenter, dataset.WindowWidth)]
    return float(first[0]), float(first[1])


def identifiers(dataset: pydicom.Dataset) -> Dict[str, str]:
    return {name: str(dataset.get(name)) for name in DICOM_IDENTIFIERS if dataset.get(name) not in (None, '')}


def read_dicom_image(path: Path, window: str) -> Scan:
    """One DICOM file as a 2-D image, drawn as stored."""
    dataset = read_dicom(path)
    values = dicom_values(dataset, path)
    unit, intensity = to_unit(values, window, dataset.get('Modality'), file_window(dataset),
                              dataset.get('PhotometricInterpretation') == 'MONOCHROME1')
    return Scan(path, 'dicom', unit, intensity, modality=dataset.get('Modality'), shape=values.shape,
                identifiers=identifiers(dataset), files=[path])


def _geometry(dataset: pydicom.Dataset, path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageOrientationPatient (2, 3), ImagePositionPatient (3,) and PixelSpacing (row, column) of a slice."""
    missing = [tag for tag in ('ImageOrientationPatient', 'ImagePositionPatient', 'PixelSpacing') if tag not in dataset]
    if missing:
        raise DataError(f'{path} lacks {", ".join(missing)}: the slices of a series need them to be ordered; '
                        f'score the files one by one instead')
    return (np.array(dataset.ImageOrientationPatient, dtype=np.float64).reshape(2, 3),
            np.array(dataset.ImagePositionPatient, dtype=np.float64),
            np.array(dataset.PixelSpacing, dtype=np.float64))


def series_order(headers: Sequence[pydicom.Dataset], files: Sequence[Path]) -> Tuple[List[int], np.ndarray, float]:
    """The slices' order along the slice normal, the LPS affine of the ordered series and its slice spacing.

    Refuses slices of other orientations or sizes, duplicate positions and uneven spacing (a missing slice)."""
    geometry = [_geometry(header, path) for header, path in zip(headers, files)]
    orientation, _, spacing = geometry[0]
    for (other, _, other_spacing), header, path in zip(geometry, headers, files):
        if not np.allclose(other, orientation, atol=1e-4) or not np.allclose(other_spacing, spacing, atol=1e-4) \
                or (header.Rows, header.Columns) != (headers[0].Rows, headers[0].Columns):
            raise DataError(f'{path} has another orientation, pixel spacing or size than {files[0]}: a series '
                            f'folder must hold the slices of one volume')
    normal = np.cross(orientation[0], orientation[1])
    positions = np.array([position @ normal for _, position, _ in geometry])
    order = [int(i) for i in np.argsort(positions, kind='stable')]
    gaps = np.diff(positions[order])
    for gap, before, after in zip(gaps, order, order[1:]):
        if gap < SAME_POSITION_MM:
            raise DataError(f'{files[before]} and {files[after]} share the slice position {positions[before]:.3f} mm: '
                            f'remove the duplicate slice')
    step = float(np.median(gaps))
    for gap, before, after in zip(gaps, order, order[1:]):
        if abs(gap - step) > SPACING_TOLERANCE * step:
            raise DataError(f'slices {files[before]} and {files[after]} are {gap:.3f} mm apart, the others '
                            f'{step:.3f} mm: a slice of the series is missing (or the folder mixes series)')
    first = geometry[order[0]][1]
    row_spacing, column_spacing = spacing
    lps = np.eye(4)
    # Voxel axis 0 runs along a row (the first orientation vector), axis 1 down a column, axis 2 along the normal.
    lps[:3, 0], lps[:3, 1] = orientation[0] * column_spacing, orientation[1] * row_spacing
    lps[:3, 2], lps[:3, 3] = normal * step, first
    return order, lps, step


def read_dicom_series(files: Sequence[Path], window: str, name: Path) -> Scan:
    """The files of one DICOM series as a volume in canonical orientation; `name` is the input's path."""
    headers = [read_dicom(path, pixels=False) for path in files]
    order, lps, _ = series_order(headers, files)
    ordered = [files[i] for i in order]
    datasets = [read_dicom(path) for path in ordered]
    # (columns, rows, slices): voxel axis 0 along a row, as the affine has it.
    values = np.stack([dicom_values(dataset, path).T for dataset, path in zip(datasets, ordered)], axis=2)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS -> NIfTI's RAS
    first = datasets[0]
    unit, intensity = to_unit(to_canonical(values, affine), window, first.get('Modality'), file_window(first),
                              first.get('PhotometricInterpretation') == 'MONOCHROME1')
    return Scan(name, 'dicom series', unit, intensity, modality=first.get('Modality'), affine=affine,
                shape=values.shape, identifiers=identifiers(first), files=ordered)


def dicom_groups(files: Sequence[Path]) -> List[List[Path]]:
    """DICOM files grouped by SeriesInstanceUID (files without one each alone), in a stable order."""
    groups: Dict[str, List[Path]] = defaultdict(list)
    for path in sorted(files):
        uid = read_dicom(path, pixels=False).get('SeriesInstanceUID')
        groups[str(uid) if uid else f'file:{path}'].append(path)
    return list(groups.values())


def read_scan(path: Path, window: str, frame: Optional[int] = None) -> Scan:
    """A NIfTI file or a single DICOM file."""
    return read_nifti(path, window, frame) if is_nifti(path) else read_dicom_image(path, window)


def read_folder_series(folder: Path, files: Sequence[Path], window: str) -> List[Scan]:
    """The DICOM files of one folder: a series per SeriesInstanceUID, a lone file as a 2-D image."""
    groups = dicom_groups(files)
    scans = []
    for number, group in enumerate(groups):
        name = folder if len(groups) == 1 else folder / f'series-{number}'
        scans.append(read_dicom_series(group, window, name) if len(group) > 1
                     else read_dicom_image(group[0], window))
    return scans
