"""Heatmaps: one PNG per test image with the input, its ground-truth mask if any, and the anomaly map.

The maps are those of `evaluate(..., keep_maps=True)`, normalised over the test set, so colours
compare across the images of one run (red: the most anomalous pixels of the test set).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

from dataset.bmad import load_image
from dataset.objects import ABNORMAL_FOLDER, NORMAL_FOLDER
from mvfa.evaluation import Evaluation

# Share of the JET-coloured map in the overlay; the rest is the input image, so anatomy stays visible.
MAP_ALPHA = 0.5
# Width of the black gap between the panels of one image.
GAP = 4


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 bytes; NaN -> 0."""
    return np.clip(np.round(np.nan_to_num(values) * 255.0), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """(S, S, 3) RGB bytes and an (S, S) map in [0, 1] -> the map in JET colours, blended over the image."""
    coloured = cv2.cvtColor(cv2.applyColorMap(to_uint8(anomaly_map), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(coloured, MAP_ALPHA, image, 1.0 - MAP_ALPHA, 0.0)


def panel(image: np.ndarray, anomaly_map: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """Input | mask (where given) | overlay, side by side: (S, 2 S + GAP or 3 S + 2 GAP, 3) RGB bytes."""
    parts = [image]
    if mask is not None:
        parts.append(np.repeat(to_uint8(mask.astype(np.float64))[..., None], 3, axis=2))
    parts.append(overlay(image, anomaly_map))
    gap = np.zeros((image.shape[0], GAP, 3), dtype=np.uint8)
    row = [parts[0]]
    for part in parts[1:]:
        row += [gap, part]
    return np.concatenate(row, axis=1)


def write_panel(path: Path, image: np.ndarray, anomaly_map: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
    """`panel` as a PNG file; `image` (S, S, 3) RGB bytes."""
    cv2.imwrite(str(path), cv2.cvtColor(panel(image, anomaly_map, mask), cv2.COLOR_RGB2BGR))  # cv2 writes BGR


def heatmap_name(obj: str, label: int, score: float, source: Path) -> str:
    """E.g. `Brain_Ungood_0.873_tU003.png`: sorting by name groups by label, then by score."""
    return f'{obj}_{ABNORMAL_FOLDER if label else NORMAL_FOLDER}_{score:.3f}_{Path(source).stem}.png'


def save_heatmaps(out_dir: str | Path, obj: str, image_paths: Sequence[Path], maps: np.ndarray,
                  labels: Sequence[int], image_scores: Sequence[float], masks: Optional[np.ndarray] = None,
                  img_size: int = 240) -> List[Path]:
    """Write one panel per test image to `out_dir`; `maps` (N, S, S) in [0, 1], `masks` (N, S, S) or None.

    Returns the files written, in test order.
    """
    if not len(image_paths) == len(maps) == len(labels) == len(image_scores):
        raise ValueError(f'{len(image_paths)} images, {len(maps)} maps, {len(labels)} labels and '
                         f'{len(image_scores)} scores: need one of each per test image')
    if maps.shape[1:] != (img_size, img_size):
        raise ValueError(f'maps are {maps.shape[1]}x{maps.shape[2]}, img_size is {img_size}: '
                         "pass the run's --img_size")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, source in enumerate(image_paths):
        image = to_uint8(load_image(Path(source), img_size).permute(1, 2, 0).numpy())
        mask = None if masks is None else masks[index]
        path = out_dir / heatmap_name(obj, int(labels[index]), float(image_scores[index]), source)
        write_panel(path, image, maps[index], mask)
        written.append(path)
    return written


def save_evaluation_heatmaps(out_dir: str | Path, obj: str, image_paths: Sequence[Path], evaluation: Evaluation,
                             img_size: int) -> List[Path]:
    """The heatmaps of a test run scored with `evaluate(..., keep_maps=True)`."""
    written = save_heatmaps(out_dir, obj, image_paths, evaluation.maps, evaluation.labels,
                            evaluation.image_scores, evaluation.masks, img_size)
    print(f'{len(written)} heatmaps written to {out_dir}')
    return written
