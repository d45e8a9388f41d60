"""Heatmaps: one PNG per test image with the input, its ground-truth mask if any, and the anomaly map.

The maps are those of `evaluate(..., keep_maps=True)`, normalised over the test set, so colours
compare across the images of one run (red: the most anomalous pixels of the test set). predict.py
draws its own images with the same panels, at each image's own size and with a colour bar of its scale.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from dataset.bmad import load_image
from dataset.objects import ABNORMAL_FOLDER, NORMAL_FOLDER
from mvfa.config import PAPER
from mvfa.evaluation import Evaluation
from mvfa.outputs import atomic_write

# Share of the JET-coloured map in the overlay; the rest is the input image, so anatomy stays visible.
MAP_ALPHA = 0.5
# Width of the black gap between the panels of one image.
GAP = 4
# Longer side of an image drawn at its own size: larger scans are scaled down, or one PNG would reach tens of MB.
MAX_SIDE = 1024
# Colour bar: strip width and font scale grow with the panel height, so the bar reads alike on small and large panels.
BAR_SHARE, MIN_BAR = 0.05, 6
FONT, FONT_PER_PIXEL, MIN_FONT = cv2.FONT_HERSHEY_SIMPLEX, 1 / 700, 0.3
WHITE = (255, 255, 255)

# A tick of a colour bar: the map value in [0, 1] and the label of what it means.
Tick = Tuple[float, str]


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 bytes; NaN -> 0."""
    return np.clip(np.round(np.nan_to_num(values) * 255.0), 0, 255).astype(np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> their JET colours (0 blue, 1 red): RGB bytes, with a last axis of 3 added."""
    return cv2.cvtColor(cv2.applyColorMap(to_uint8(values), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB bytes and an (H, W) map in [0, 1] -> the map in JET colours, blended over the image."""
    return cv2.addWeighted(jet(anomaly_map), MAP_ALPHA, image, 1.0 - MAP_ALPHA, 0.0)


def colour_bar(height: int, ticks: Sequence[Tick]) -> np.ndarray:
    """(height, W, 3) RGB bytes: the JET scale of `overlay`, 1 (red) at the top row to 0 (blue) at the bottom,
    with the tick labels to its right. A label that would overlap one already drawn is left out, the two ends
    drawn first, so short panels keep the range."""
    strip = max(MIN_BAR, round(height * BAR_SHARE))
    scale = max(MIN_FONT, height * FONT_PER_PIXEL)
    thickness = max(1, round(scale))
    label_width = max(cv2.getTextSize(label, FONT, scale, thickness)[0][0] for _, label in ticks)
    bar = np.zeros((height, 2 * strip + label_width, 3), dtype=np.uint8)
    bar[:, :strip] = jet(np.linspace(1.0, 0.0, height)[:, None])
    taken: List[Tuple[int, int]] = []
    for value, label in [*ticks[:1], *ticks[-1:], *ticks[1:-1]]:
        (_, text_height), below = cv2.getTextSize(label, FONT, scale, thickness)
        y = round((1.0 - value) * (height - 1))
        # Centred on its tick, but kept inside the bar.
        baseline = min(max(y + text_height // 2, text_height), height - 1 - below)
        top, bottom = baseline - text_height, baseline + below
        if any(top <= other_bottom and other_top <= bottom for other_top, other_bottom in taken):
            continue
        taken.append((top, bottom))
        cv2.line(bar, (strip, y), (strip + strip // 2, y), WHITE, thickness)
        cv2.putText(bar, label, (strip + strip // 2 + 1, baseline), FONT, scale, WHITE, thickness, cv2.LINE_AA)
    return bar


def at_image_size(image: np.ndarray, anomaly_map: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """An (H, W, 3) image with its longer side capped at MAX_SIDE (aspect kept), and the map resized to it
    (bilinear): the model's square map laid back on the image as it was read."""
    height, width = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 sizes are (width, height)
    if scale < 1.0:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)  # area averaging: no aliasing when shrinking
    return image, cv2.resize(anomaly_map, size, interpolation=cv2.INTER_LINEAR)


def panel(image: np.ndarray, anomaly_map: np.ndarray, mask: Optional[np.ndarray] = None,
          ticks: Optional[Sequence[Tick]] = None) -> np.ndarray:
    """Input | mask (where given) | overlay | colour bar (where `ticks` are given), GAP apart: (H, *, 3) RGB bytes."""
    parts = [image]
    if mask is not None:
        parts.append(np.repeat(to_uint8(mask.astype(np.float64))[..., None], 3, axis=2))
    parts.append(overlay(image, anomaly_map))
    if ticks is not None:
        parts.append(colour_bar(image.shape[0], ticks))
    gap = np.zeros((image.shape[0], GAP, 3), dtype=np.uint8)
    row = [parts[0]]
    for part in parts[1:]:
        row += [gap, part]
    return np.concatenate(row, axis=1)


def write_panel(path: Path, image: np.ndarray, anomaly_map: np.ndarray, mask: Optional[np.ndarray] = None,
                ticks: Optional[Sequence[Tick]] = None) -> None:
    """`panel` as a PNG file, written whole (`atomic_write`); `image` (H, W, 3) RGB bytes."""
    _, png = cv2.imencode('.png', cv2.cvtColor(panel(image, anomaly_map, mask, ticks), cv2.COLOR_RGB2BGR))  # BGR
    atomic_write(path, png.tobytes())


def heatmap_name(obj: str, label: int, score: float, source: Path) -> str:
    """E.g. `Brain_Ungood_0.873_tU003.png`: sorting by name groups by label, then by score."""
    return f'{obj}_{ABNORMAL_FOLDER if label else NORMAL_FOLDER}_{score:.3f}_{Path(source).stem}.png'


def save_heatmaps(out_dir: str | Path, obj: str, image_paths: Sequence[Path], maps: np.ndarray,
                  labels: Sequence[int], image_scores: Sequence[float], masks: Optional[np.ndarray] = None,
                  img_size: int = PAPER.img_size) -> List[Path]:
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
