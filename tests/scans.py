"""Scans the tests write: DICOM slices (uncompressed, by pydicom) and NIfTI volumes (by nibabel)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# A tiny model checkpoint's flags: the tiny random CLIP at 56 px.
SIZE = 56
FEATURES = ['3', '6', '9', '12']


def write_dicom(path: Path, pixels: np.ndarray, position: Optional[Sequence[float]] = (0.0, 0.0, 0.0),
                series: str = '1.2.3.4', modality: str = 'CT', photometric: str = 'MONOCHROME2',
                orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), spacing: Sequence[float] = (0.5, 0.8),
                slope: float = 1.0, intercept: float = -1024.0, window: Optional[Sequence[float]] = None) -> Path:
    """One single-frame greyscale slice, signed 16-bit stored values `pixels` (rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.SeriesInstanceUID, dataset.StudyInstanceUID = modality, series, '1.2.3'
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
    if position is not None:
        dataset.ImageOrientationPatient = list(orientation)
        dataset.ImagePositionPatient = list(position)
    dataset.PixelSpacing = list(spacing)
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    dataset.PixelData = pixels.astype('<i2').tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def checkpoint_flags(checkpoint: Path) -> list:
    return ['--checkpoint', str(checkpoint), '--obj', 'Brain', '--model_name', 'tiny-clip', '--pretrain', 'none',
            '--img_size', str(SIZE), '--features_list', *FEATURES, '--device', 'cpu']
