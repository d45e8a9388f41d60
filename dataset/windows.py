"""Intensities as radiologists set them: CT windows (level/width in Hounsfield units) and the per-volume
percentile range of MR. Torch-free and light, so the flag checks can use it before anything loads.

A window maps a value x to [0, 1] by DICOM's linear VOI function (PS3.3 C.11.2.1.2) with level c and
width w: 0 at or below c - 0.5 - (w - 1) / 2, 1 above c - 0.5 + (w - 1) / 2, linear between. The
percentile range maps the volume's LOW and HIGH percentiles (of its voxels above its minimum, so that
zero background does not count) to 0 and 1, clipped: the same for every slice of the volume.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np

from mvfa.common.errors import DataError

# Level / width in HU of the named CT windows (the usual radiology settings, e.g. Radiopaedia's "Windowing (CT)").
PRESETS: Dict[str, Tuple[float, float]] = {
    'brain': (40.0, 80.0),
    'soft_tissue': (50.0, 400.0),
    'abdomen': (50.0, 400.0),
    'liver': (30.0, 150.0),
    'mediastinum': (50.0, 350.0),
    'lung': (-600.0, 1500.0),
    'bone': (400.0, 1800.0),
}
# --window values that are no preset: the scan's own rule, the DICOM's own window, the per-volume range.
AUTO, FILE, PERCENTILE = 'auto', 'file', 'percentile'
# The per-volume percentile range of MR (and of any scan without a window).
PERCENTILES = (0.5, 99.5)
# The CT window of `auto` for a CT whose DICOM has no window of its own.
CT_DEFAULT = 'soft_tissue'

WINDOW_HELP = (f"'{AUTO}' (CT: the DICOM's own window, else {CT_DEFAULT}; MR, NIfTI and others: the volume's "
               f"{PERCENTILES[0]:g}-{PERCENTILES[1]:g} percentile range), '{FILE}' (the DICOM's own window), "
               f"'{PERCENTILE}', LEVEL,WIDTH in HU, or a CT preset (level/width): "
               + ', '.join(f'{name} {level:g}/{width:g}' for name, (level, width) in PRESETS.items()))
WINDOW_MEANING = f"{AUTO}, {FILE}, {PERCENTILE}, LEVEL,WIDTH with WIDTH >= 1, or one of {', '.join(PRESETS)}"


def level_width(spec: str) -> Optional[Tuple[float, float]]:
    """A preset's or an explicit 'LEVEL,WIDTH' window; None for auto, file and percentile."""
    if spec in PRESETS:
        return PRESETS[spec]
    if spec in (AUTO, FILE, PERCENTILE):
        return None
    level, width = (float(part) for part in spec.split(','))
    return level, width


def is_window(spec: object) -> bool:
    """Whether `spec` is a valid --window value."""
    if not isinstance(spec, str):
        return False
    try:
        window = level_width(spec)
    except ValueError:
        return False
    return window is None or (np.isfinite(window).all() and window[1] >= 1)


@dataclass(frozen=True)
class Intensity:
    """How a scan's values became [0, 1]: recorded in scores.json and the benchmark's split file.

    `method` 'window' (level, width in the scan's units: HU for CT) or 'percentile' (`percentiles` of
    the volume and the `values` they had); `source` says where the choice came from; `inverted`:
    MONOCHROME1 (low values bright) turned so that high values are bright."""
    method: str
    source: str
    level: Optional[float] = None
    width: Optional[float] = None
    percentiles: Optional[Tuple[float, float]] = None
    values: Optional[Tuple[float, float]] = None
    inverted: bool = False

    def record(self) -> Dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def apply_window(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """DICOM's linear window (see the module docstring): float32 in [0, 1]."""
    low, high = level - 0.5 - (width - 1) / 2, level - 0.5 + (width - 1) / 2
    values = values.astype(np.float32)
    if high <= low:  # width 1: a threshold
        return (values > low).astype(np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def percentile_range(values: np.ndarray, percentiles: Tuple[float, float] = PERCENTILES) -> Tuple[float, float]:
    """The volume's `percentiles` over its voxels above its minimum (all voxels where none are)."""
    foreground = values[values > values.min()]
    low, high = np.percentile(foreground if foreground.size else values, percentiles)
    return float(low), float(high)


def apply_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] -> [0, 1], clipped; a constant volume gives zeros."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def to_unit(values: np.ndarray, spec: str, modality: Optional[str], file_window: Optional[Tuple[float, float]],
            monochrome1: bool = False) -> Tuple[np.ndarray, Intensity]:
    """A whole scan's values (CT in HU) -> [0, 1] by --window `spec`, and what was done.

    `modality` is the DICOM's (None for NIfTI); `file_window` the DICOM's own (level, width), if any."""
    if spec == FILE and file_window is None:
        raise DataError("--window file: the scan has no window of its own (DICOM WindowCenter/WindowWidth); "
                        "pick a preset or LEVEL,WIDTH")
    explicit = level_width(spec)
    if explicit is not None:
        window, source = explicit, f'--window {spec}'
    elif spec == FILE or (spec == AUTO and file_window is not None and modality != 'MR'):
        window, source = file_window, "the DICOM's own window"
    elif spec == AUTO and modality == 'CT':
        window, source = PRESETS[CT_DEFAULT], f'{AUTO}: CT without a window of its own -> {CT_DEFAULT}'
    else:
        window, source = None, f'--window {spec}' if spec == PERCENTILE else f'{AUTO}: {modality or "NIfTI"}'
    if window is not None:
        unit, intensity = apply_window(values, *window), Intensity('window', source, level=window[0], width=window[1])
    else:
        low, high = percentile_range(values)
        unit = apply_range(values, low, high)
        intensity = Intensity('percentile', source, percentiles=PERCENTILES, values=(low, high))
    if monochrome1:
        unit = 1.0 - unit
    return unit, replace(intensity, inverted=monochrome1)
