"""Heatmaps: one PNG per test image with the input, its ground-truth mask (or "no mask"), the anomaly
map over the input and a colour bar, each panel titled, the image's name, label and score above them
and a caption under them that says what the colours mean.

The maps are those of `evaluate(..., keep_maps=True)`, normalised over the test set, so colours
compare across the images of one run (red: the most anomalous pixels of the test set). predict.py
draws its own images with the same `panel`, at each image's own size and with its own colour scale.
Drawn with OpenCV, not matplotlib: a few milliseconds an image beside the PNG encoding, so
`--save_vis` over a test set of thousands stays quick.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from dataset.readers import load_image
from dataset.layouts import Record
from dataset.objects import ABNORMAL_FOLDER, NORMAL_FOLDER
from mvfa.common.config import PAPER
from mvfa.engine.evaluation import Evaluation
from mvfa.common.outputs import atomic_write

# Share of the JET-coloured map in the overlay; the rest is the input image, so anatomy stays visible.
MAP_ALPHA = 0.5
# Width of the gap between the panels of one image.
GAP = 4
# Longer side of an image drawn at its own size: larger scans are scaled down, or one PNG would reach tens of MB.
MAX_SIDE = 1024
# Panels shorter than this are enlarged (nearest neighbour: the pixels as they are), so titles fit and read.
MIN_HEIGHT = 240
# Colour bar strip width, and the text size, grow with the panel height, so figures read alike at any size.
BAR_SHARE, MIN_BAR = 0.05, 6
FONT, FONT_PER_PIXEL, MIN_FONT = cv2.FONT_HERSHEY_SIMPLEX, 1 / 480, 0.4
# A figure is black text on white, as a printed one: a black mask (a normal image's) stands out from it.
BACKGROUND, TEXT = 255, (0, 0, 0)
NO_MASK_GREY = 200
TICKS = 5  # colour bar ticks, both ends included
# The narrowest range a colour scale spans, so a constant map does not divide by zero (it is drawn blue).
MIN_SPAN = 1e-12
LABEL_NAMES = ('normal', 'abnormal')  # label 0, label 1
INPUT_TITLE, MASK_TITLE, MAP_TITLE = 'input', 'ground truth', 'anomaly map'

# A tick of a colour bar: the position in [0, 1] (0 bottom, blue) and its label.
Tick = Tuple[float, str]
# Where a part lies in a drawing: top, left, height, width (pixels).
Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class ColourScale:
    """Map values from `low` (blue) to `high` (red), clipped outside; `title` heads the colour bar and
    `caption` says under the figure what the colours mean."""
    low: float
    high: float
    title: str
    caption: str
    unit: str = ''  # appended to the tick labels, e.g. ' sd'

    def position(self, values: np.ndarray) -> np.ndarray:
        """Map values -> [0, 1], the input of `jet`."""
        return np.clip((values - self.low) / max(self.high - self.low, MIN_SPAN), 0.0, 1.0)

    def ticks(self) -> Tuple[Tick, ...]:
        return tuple((float(self.position(value)), f'{value:.3g}{self.unit}')
                     for value in np.linspace(self.low, self.high, TICKS))


# The test scripts' maps: normalised over the test set, so one scale for every image of a run.
TEST_SET_SCALE = ColourScale(0.0, 1.0, 'test set', 'colours: pixel score normalised over the test set, 0 (blue) to '
                             '1 (red), the same scale for every image of this run')


def per_image_scale(anomaly_map: np.ndarray, what: str) -> ColourScale:
    """A scale from the map's own minimum (blue) to its maximum (red), so the structure of a map shows
    however small its values; colours then do not compare across images, and the caption says so."""
    low, high = float(np.min(anomaly_map)), float(np.max(anomaly_map))
    return ColourScale(low, high, 'per image', f'colours: {what}, from this image\'s minimum {low:.3g} (blue) to '
                       f'its maximum {high:.3g} (red): a per-image scale, not comparable across images')


@dataclass
class Drawing:
    """A figure as (H, W, 3) RGB bytes, and where each of its parts lies (by title; 'header', 'caption')."""
    pixels: np.ndarray
    boxes: Dict[str, Box]


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 bytes; NaN -> 0."""
    return np.clip(np.round(np.nan_to_num(values) * 255.0), 0, 255).astype(np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> their JET colours (0 blue, 1 red): RGB bytes, with a last axis of 3 added."""
    return cv2.cvtColor(cv2.applyColorMap(to_uint8(values), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB bytes and an (H, W) map in [0, 1] -> the map in JET colours, blended over the image."""
    return cv2.addWeighted(jet(anomaly_map), MAP_ALPHA, image, 1.0 - MAP_ALPHA, 0.0)


def font_scale(height: int) -> float:
    """The text size of a figure whose panels are `height` pixels high."""
    return max(MIN_FONT, height * FONT_PER_PIXEL)


def thickness_of(scale: float) -> int:
    return max(1, round(scale))


def line_height(scale: float) -> int:
    """Pixels of one line of text at `scale`, a margin included."""
    (_, text_height), below = cv2.getTextSize('Ag', FONT, scale, thickness_of(scale))
    return text_height + below + 2 * margin(scale)


def margin(scale: float) -> int:
    return max(2, round(4 * scale))


def text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, thickness_of(scale))[0][0]


def wrap(text: str, width: int, scale: float) -> List[str]:
    """`text` in lines no wider than `width` at `scale`, broken between words (a longer word stays whole).
    Each word is measured once and a line as the sum of its words and spaces, which runs a pixel or two
    over the line drawn: a line that sum puts over `width` is measured whole."""
    space = text_width(' ', scale)
    lines: List[str] = []
    line_width = 0
    for word in text.split():
        word_width = text_width(word, scale)
        if lines:
            longer = line_width + space + word_width
            if longer > width:
                longer = text_width(f'{lines[-1]} {word}', scale)
            if longer <= width:
                lines[-1] += f' {word}'
                line_width = longer
                continue
        lines.append(word)
        line_width = word_width
    return lines or ['']


# Titles, captions and colour bars repeat over the images of a run: each is drawn once, then kept read-only.
@lru_cache(maxsize=64)
def text_block(text: str, width: int, scale: float, wrapped: bool = False) -> np.ndarray:
    """(h, width, 3): `text` in TEXT on BACKGROUND, centred; wrapped onto lines, else on one line. A line
    wider than `width` is drawn smaller, to fit."""
    inner = width - 2 * margin(scale)
    lines = wrap(text, inner, scale) if wrapped else [text]
    height = line_height(scale)
    block = np.full((height * len(lines), width, 3), BACKGROUND, dtype=np.uint8)
    for row, line in enumerate(lines):
        size = scale
        (line_width, _), below = cv2.getTextSize(line, FONT, size, thickness_of(size))
        if line_width > inner:
            size = scale * inner / line_width
            (line_width, _), below = cv2.getTextSize(line, FONT, size, thickness_of(size))
        baseline = (row + 1) * height - margin(scale) - below
        cv2.putText(block, line, (max(0, (width - line_width) // 2), baseline), FONT, size, TEXT,
                    thickness_of(size), cv2.LINE_AA)
    block.setflags(write=False)
    return block


@lru_cache(maxsize=64)
def colour_bar(height: int, ticks: Tuple[Tick, ...], scale: float) -> np.ndarray:
    """(height, W, 3) RGB bytes: the JET scale of `overlay`, 1 (red) at the top row to 0 (blue) at the bottom,
    with the tick labels to its right, at text size `scale`. A label that would overlap one already drawn
    is left out, the two ends drawn first, so short panels keep the range."""
    strip = max(MIN_BAR, round(height * BAR_SHARE))
    thickness = thickness_of(scale)
    label_width = max(cv2.getTextSize(label, FONT, scale, thickness)[0][0] for _, label in ticks)
    bar = np.full((height, 2 * strip + label_width, 3), BACKGROUND, dtype=np.uint8)
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
        cv2.line(bar, (strip, y), (strip + strip // 2, y), TEXT, thickness)
        cv2.putText(bar, label, (strip + strip // 2 + 1, baseline), FONT, scale, TEXT, thickness, cv2.LINE_AA)
    bar.setflags(write=False)
    return bar


def display_size(height: int, width: int) -> Tuple[int, int]:
    """(height, width) an image is drawn at: its own, the longer side capped at MAX_SIDE, short ones
    enlarged to MIN_HEIGHT (within the cap); aspect kept."""
    scale = min(MAX_SIDE / max(height, width), max(1.0, MIN_HEIGHT / height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(values: np.ndarray, size: Tuple[int, int], enlarge: int, shrink: int = cv2.INTER_AREA) -> np.ndarray:
    """`values` at (height, width) `size`, by `enlarge` or `shrink` interpolation (cv2 sizes are (width, height))."""
    if values.shape[:2] == size:
        return values
    interpolation = shrink if size[0] < values.shape[0] else enlarge
    return cv2.resize(values, size[::-1], interpolation=interpolation)


def at_display_size(image: np.ndarray, anomaly_map: np.ndarray, mask: Optional[np.ndarray] = None
                    ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The image at `display_size` (area averaging when shrinking: no aliasing; nearest when enlarging:
    the pixels as they are), the map laid onto it (bilinear) and the mask (nearest: stays binary)."""
    size = display_size(*image.shape[:2])
    anomaly_map = cv2.resize(anomaly_map.astype(np.float32), size[::-1], interpolation=cv2.INTER_LINEAR)
    mask = None if mask is None else resize(to_uint8(mask.astype(np.float32)), size, cv2.INTER_NEAREST,
                                            cv2.INTER_NEAREST)
    return resize(image, size, cv2.INTER_NEAREST), anomaly_map, mask


def no_mask_panel(height: int, width: int, scale: float) -> np.ndarray:
    """A grey panel that says "no mask": the object has image labels only."""
    words = text_block('no mask', width, scale)
    grey = np.full((height, width, 3), NO_MASK_GREY, dtype=np.uint8)
    top = (height - len(words)) // 2
    grey[top:top + len(words)] = np.minimum(grey[top:top + len(words)], words)
    return grey


def panel(image: np.ndarray, anomaly_map: np.ndarray, scale: ColourScale, header: str,
          mask: Optional[np.ndarray] = None, ground_truth: bool = False) -> Drawing:
    """The figure of one image: `header` on top; titled panels input | ground truth (with `ground_truth`:
    `mask`, or "no mask" where None) | the map over the input in `scale`'s colours | the colour bar;
    `scale.caption` under them. `image` (H, W, 3) RGB bytes; map and mask any size, laid onto the image."""
    image, anomaly_map, mask = at_display_size(image, anomaly_map, mask)
    height, width = image.shape[:2]
    text = font_scale(height)
    columns = [(INPUT_TITLE, image)]
    if ground_truth:
        columns.append((MASK_TITLE, no_mask_panel(height, width, text) if mask is None
                        else np.repeat(mask[..., None], 3, axis=2)))
    columns += [(MAP_TITLE, overlay(image, scale.position(anomaly_map))),
                (scale.title, colour_bar(height, scale.ticks(), text))]
    total = sum(part.shape[1] for _, part in columns) + GAP * (len(columns) - 1)
    header_block = text_block(header, total, text, wrapped=True)
    caption_block = text_block(scale.caption, total, text, wrapped=True)
    title_height = line_height(text)
    top = len(header_block) + title_height
    pixels = np.full((top + height + len(caption_block), total, 3), BACKGROUND, dtype=np.uint8)
    pixels[:len(header_block)] = header_block
    pixels[top + height:] = caption_block
    boxes = {'header': (0, 0, len(header_block), total), 'caption': (top + height, 0, len(caption_block), total)}
    left = 0
    for title, part in columns:
        part_width = part.shape[1]
        pixels[top - title_height:top, left:left + part_width] = text_block(title, part_width, text)
        pixels[top:top + height, left:left + part_width] = part
        boxes[title] = (top, left, height, part_width)
        left += part_width + GAP
    return Drawing(pixels, boxes)


def write_panel(path: Path, drawing: Drawing) -> None:
    """A `panel` as a PNG file, written whole (`atomic_write`)."""
    _, png = cv2.imencode('.png', cv2.cvtColor(drawing.pixels, cv2.COLOR_RGB2BGR))  # cv2 encodes BGR
    atomic_write(path, png.tobytes())


def short_names(names: Sequence[str]) -> List[str]:
    """Record names (paths below the category, e.g. `test/crack/000.png`) without the folders all of them
    share and without the suffix, the folders left joined by '-': `crack-000`, `good-000` (BMAD: the file
    stem). Two defect folders holding the same file name keep apart."""
    parts = [PurePosixPath(name).parts for name in names]
    shared = 0
    while parts and all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
        shared += 1
    return ['-'.join([*p[shared:-1], PurePosixPath(p[-1]).stem]) for p in parts]


def unique_names(stems: Sequence[str], suffix: str = '.png') -> List[str]:
    """`<stem><suffix>` each, numbered `<stem>-1<suffix>`, ... where a stem repeats, so no file overwrites another."""
    names: List[str] = []
    taken = set()
    for stem in stems:
        name, copy = f'{stem}{suffix}', 1
        while name in taken:
            name, copy = f'{stem}-{copy}{suffix}', copy + 1
        taken.add(name)
        names.append(name)
    return names


def heatmap_names(obj: str, records: Sequence[Record], scores: Sequence[float]) -> List[str]:
    """E.g. `Brain_Ungood_0.873_tU003.png`, `bottle_Ungood_0.873_crack-000.png`: sorting by name groups
    by label, then by score; names never repeat."""
    return unique_names([f'{obj}_{ABNORMAL_FOLDER if record.label else NORMAL_FOLDER}_{score:.3f}_{name}'
                             for record, score, name in zip(records, scores, short_names([r.name for r in records]))])


def record_header(obj: str, record: Record, score: float) -> str:
    """What a test-set heatmap shows above its panels: which image, its label and its score."""
    return (f'{obj} {record.name} | label: {LABEL_NAMES[record.label]} | '
            f'image score: {score:.3f} (normalised over the test set)')


def save_heatmaps(out_dir: str | Path, obj: str, records: Sequence[Record], maps: np.ndarray,
                  image_scores: Sequence[float], masks: Optional[np.ndarray] = None,
                  img_size: int = PAPER.img_size) -> List[Path]:
    """Write one panel per test image to `out_dir`; `maps` (N, S, S) in [0, 1], `masks` (N, S, S) or None
    (an object with image labels only: "no mask").

    Returns the files written, in test order.
    """
    if not len(records) == len(maps) == len(image_scores):
        raise ValueError(f'{len(records)} images, {len(maps)} maps and {len(image_scores)} scores: '
                         'need one of each per test image')
    if maps.shape[1:] != (img_size, img_size):
        raise ValueError(f'maps are {maps.shape[1]}x{maps.shape[2]}, img_size is {img_size}: '
                         "pass the run's --img_size")
    out_dir = Path(out_dir)
    scores = [float(score) for score in image_scores]
    written = []
    for index, (record, name) in enumerate(zip(records, heatmap_names(obj, records, scores))):
        image = to_uint8(load_image(record.image, img_size).permute(1, 2, 0).numpy())
        mask = None if masks is None else masks[index]
        path = out_dir / name
        write_panel(path, panel(image, maps[index], TEST_SET_SCALE, record_header(obj, record, scores[index]),
                                mask, ground_truth=True))
        written.append(path)
    return written


def save_evaluation_heatmaps(out_dir: str | Path, obj: str, records: Sequence[Record], evaluation: Evaluation,
                             img_size: int) -> List[Path]:
    """The heatmaps of a test run scored with `evaluate(..., keep_maps=True)`; `records` the test set's."""
    written = save_heatmaps(out_dir, obj, records, evaluation.maps, evaluation.image_scores, evaluation.masks,
                            img_size)
    print(f'{len(written)} heatmaps written to {out_dir}')
    return written
