"""Deterministic synthetic stand-in for the BMAD benchmark (and for MVTec AD and VisA), for the demo and the tests.

Writes `<out>/<Obj>_AD/{valid,test}/{good,Ungood}/img/*.png` (plus `Ungood/anomaly_mask/` for the
segmentation objects) and `<out>/fewshot_seed/<Obj>/<k>-shot.txt`, the BMAD layout; with
`--layout mvtec` or `--layout visa` three categories in MVTec AD's or VisA's layout (`dataset.layouts`).
Each modality is a cheap procedural caricature (numpy/scipy) with a clearly visible lesion in the
abnormal images. Every random draw comes from a `np.random.default_rng` seeded by `seed`, the object,
the split, the class and the image index, so the same arguments give byte-identical files.

    python -m dataset.synthetic --out data/demo
    python -m dataset.synthetic --layout mvtec --out data/mvtec_demo   # MVTec AD's layout
    python -m dataset.synthetic --layout visa --out data/visa_demo     # VisA's, with split_csv/1cls.csv
"""
from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter

from dataset.objects import ABNORMAL_FOLDER, NORMAL_FOLDER, OBJECTS, has_masks
from mvfa.common.flags import FlagParser, parse_or_exit

SPLITS = ('valid', 'test')
CLASSES = (NORMAL_FOLDER, ABNORMAL_FOLDER)
# File-name prefixes: unique per split and class, so names never clash across folders.
PREFIX = {('valid', 'good'): 'vg', ('valid', 'Ungood'): 'vU', ('test', 'good'): 'tg', ('test', 'Ungood'): 'tU'}

Array = np.ndarray
Mask = Optional[Array]


# ---------------------------------------------------------------- drawing helpers

def _grid(size: int) -> Tuple[Array, Array]:
    """Pixel-centre coordinates (y, x) in [-1, 1], y pointing down."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis, indexing='ij')


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> Array:
    """Unit-variance smooth noise; `sigma` is a fraction of the image size so texture scales with it."""
    g = gaussian_filter(rng.standard_normal((size, size)), sigma * size)
    return g / (g.std() + 1e-8)


def _ellipse(yy: Array, xx: Array, cy: float, cx: float, ry: float, rx: float) -> Array:
    """Normalised squared radius: < 1 inside the ellipse."""
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _blob(rng: np.random.Generator, yy: Array, xx: Array, cy: float, cx: float, r: float,
          wobble: float = 0.25) -> Array:
    """An irregular round region: a circle whose radius varies with angle by a few low harmonics."""
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(theta, r)
    for k in (2, 3, 4):
        radius += r * rng.uniform(0, wobble / 3) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) < radius


def _pick_center(rng: np.random.Generator, region: Array, margin: float) -> Tuple[float, float]:
    """A random point of `region` at least `margin` (in [-1, 1] units) from its border, as (y, x)."""
    size = region.shape[0]
    depth = distance_transform_edt(region)
    inner = depth >= margin * size / 2
    # A region thinner than the margin still gets its deepest points rather than failing.
    candidates = np.argwhere(inner if inner.any() else depth == depth.max())
    iy, ix = candidates[rng.integers(len(candidates))]
    return (iy + 0.5) / size * 2 - 1, (ix + 0.5) / size * 2 - 1


def _lesion_radius(rng: np.random.Generator) -> float:
    # In [-1, 1] units: from about 1.3% to 6% of the image area.
    return rng.uniform(0.13, 0.28)


def _paint(img: Array, region: Array, value: float, rng: np.random.Generator, grain: float = 0.04) -> None:
    img[region] = value + grain * rng.standard_normal(int(region.sum()))


# ---------------------------------------------------------------- one generator per object
# Each takes (rng, size, abnormal) and returns an image in [0, 1] ((H, W) or (H, W, 3)) and the lesion
# mask (None where the object has no pixel masks).

def _brain(rng: np.random.Generator, size: int, abnormal: bool) -> Tuple[Array, Mask]:
    """Axial MRI slice: bright skull ring, textured tissue, dark ventricles; lesion: bright tumour."""
    yy, xx = _grid(size)
    head = np.sqrt(_ellipse(yy, xx, rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04),
                            rng.uniform(0.82, 0.9), rng.uniform(0.66, 0.74)))
    brain = head < 0.86
    img = np.where(head < 1.0, 0.85, 0.02)
    tissue = 0.42 + 0.06 * _smooth_noise(rng, size, 0.02) + 0.05 * (_smooth_noise(rng, size, 0.06) > 0.3)
    img = np.where(brain, tissue, img)
    for side in (-1, 1):
        ventricle = _ellipse(yy, xx, -0.05, side * 0.09, rng.uniform(0.14, 0.2), 0.05) < 1
        img[ventricle] = 0.15
    mask = None
    if abnormal:
        r = _lesion_radius(rng)
        mask = _blob(rng, yy, xx, *_pick_center(rng, head < 0.75, r), r)
        _paint(img, mask, rng.uniform(0.88, 0.98), rng)
    return img + 0.02 * rng.standard_normal(img.shape), mask


def _liver(rng: np.random.Generator, size: int, abnormal: bool) -> Tuple[Array, Mask]:
    """Abdominal CT slice: body, fat ring, spine, aorta, liver; lesion: dark or bright round lesion."""
    yy, xx = _grid(size)
    body = np.sqrt(_ellipse(yy, xx, rng.uniform(0, 0.05), 0, rng.uniform(0.62, 0.72), rng.uniform(0.84, 0.92)))
    img = np.where(body < 1, 0.3, 0.0)
    img[body < 0.9] = 0.45
    img += 0.03 * _smooth_noise(rng, size, 0.03) * (body < 1)
    liver = _blob(rng, yy, xx, rng.uniform(-0.15, -0.05), rng.uniform(-0.4, -0.3), rng.uniform(0.36, 0.42), 0.4)
    liver &= body < 0.85
    img[liver] = 0.62 + 0.03 * _smooth_noise(rng, size, 0.015)[liver]
    spleen = _ellipse(yy, xx, -0.1, 0.5, 0.2, 0.12) < 1
    img[spleen] = 0.55
    spine = np.hypot(yy - 0.42, xx)
    img[spine < 0.11] = 0.95
    img[spine < 0.05] = 0.6
    img[np.hypot(yy - 0.22, xx - 0.1) < 0.05] = 0.8  # aorta
    mask = None
    if abnormal:
        r = _lesion_radius(rng)
        mask = _blob(rng, yy, xx, *_pick_center(rng, liver, r), r) & liver
        _paint(img, mask, rng.choice([0.25, 0.9]), rng)
    return img + 0.02 * rng.standard_normal(img.shape), mask


# Reflectivity against depth below the inner retinal surface ([-1, 1] units): nerve fibre layer,
# plexiform/nuclear layers, photoreceptors, the bright RPE, the choroid. Steps are duplicate knots.
_RETINA_DEPTH = (-0.01, 0.0, 0.05, 0.06, 0.12, 0.13, 0.2, 0.21, 0.27, 0.28, 0.31, 0.32, 0.36, 0.5)
_RETINA_VALUE = (0.05, 0.85, 0.7, 0.35, 0.35, 0.55, 0.55, 0.22, 0.22, 0.6, 0.6, 0.95, 0.5, 0.12)


def _retina_surface(rng: np.random.Generator, xx: Array, fovea: bool) -> Array:
    """Height of the inner retinal surface along x: tilt, curvature, gentle waves, maybe a foveal pit."""
    top = (rng.uniform(-0.45, -0.3) + rng.uniform(-0.1, 0.1) * xx + rng.uniform(0.05, 0.2) * xx ** 2
           + rng.uniform(0.01, 0.03) * np.sin(rng.uniform(2, 5) * np.pi * xx + rng.uniform(0, 2 * np.pi)))
    if fovea:
        top += rng.uniform(0.06, 0.12) * np.exp(-((xx - rng.uniform(-0.2, 0.2)) / 0.15) ** 2)
    return top


def _speckle(rng: np.random.Generator, img: Array) -> Array:
    # OCT speckle is multiplicative; a slight blur gives it a grain of a pixel or two.
    return img * gaussian_filter(rng.gamma(4.0, 0.25, img.shape), 0.6) + 0.02 * rng.standard_normal(img.shape)


def _retina(rng: np.random.Generator, size: int, fovea: bool) -> Tuple[Array, Array]:
    """Depth below the inner retinal surface per pixel (layer thickness varies), and the x grid."""
    yy, xx = _grid(size)
    return (yy - _retina_surface(rng, xx, fovea)) / rng.uniform(1.5, 1.8), xx


def _retina_resc(rng: np.random.Generator, size: int, abnormal: bool) -> Tuple[Array, Mask]:
    """Retinal OCT B-scan; lesion: a dark fluid pocket between the layers."""
    depth, xx = _retina(rng, size, fovea=False)
    img = np.interp(depth, _RETINA_DEPTH, _RETINA_VALUE)
    mask = None
    if abnormal:
        # The pocket is an ellipse in (x, depth), so it follows the curve of the layers.
        mask = _ellipse(depth, xx, rng.uniform(0.15, 0.22), rng.uniform(-0.5, 0.5),
                        rng.uniform(0.08, 0.13), rng.uniform(0.22, 0.4)) < 1
        _paint(img, mask, 0.04, rng, grain=0.01)
    return _speckle(rng, img), mask


def _retina_oct2017(rng: np.random.Generator, size: int, abnormal: bool) -> Tuple[Array, Mask]:
    """Retinal OCT B-scan with a foveal pit; anomaly: drusen lifting the RPE and fluid cysts."""
    depth, xx = _retina(rng, size, fovea=True)
    if abnormal:
        bumps = sum(rng.uniform(0.06, 0.12) * np.exp(-((xx - rng.uniform(-0.7, 0.7)) / rng.uniform(0.06, 0.15)) ** 2)
                    for _ in range(rng.integers(1, 4)))
        # Only the outer layers rise (a drusen lifts the RPE, not the whole retina).
        depth = depth + bumps * np.clip((depth - 0.1) / 0.15, 0, 1)
    img = np.interp(depth, _RETINA_DEPTH, _RETINA_VALUE)
    if abnormal:
        for _ in range(rng.integers(1, 3)):
            cyst = _ellipse(depth, xx, rng.uniform(0.08, 0.2), rng.uniform(-0.6, 0.6),
                            rng.uniform(0.04, 0.08), rng.uniform(0.08, 0.2)) < 1
            _paint(img, cyst, 0.05, rng, grain=0.01)
    return _speckle(rng, img), None


def _chest(rng: np.random.Generator, size: int, abnormal: bool) -> Tuple[Array, Mask]:
    """Frontal chest radiograph: dark lung fields, bright mediastinum, spine, ribs; anomaly: nodules."""
    yy, xx = _grid(size)
    thorax = _ellipse(yy, xx, 0.1, 0, 1.0, rng.uniform(0.82, 0.9)) < 1
    img = np.where(thorax, 0.55, 0.08)
    lungs = np.zeros_like(thorax)
    for side in (-1, 1):
        lungs |= _ellipse(yy, xx, rng.uniform(-0.12, -0.02), side * rng.uniform(0.34, 0.4),
                          rng.uniform(0.5, 0.6), rng.uniform(0.22, 0.28)) < 1
    img[lungs] = 0.2
    # Ribs: curved horizontal bands, visible over the lungs.
    ribs = np.cos(2 * np.pi * rng.uniform(5, 7) * (yy - 0.3 * xx ** 2) / 2 + rng.uniform(0, 2 * np.pi)) ** 8
    img += 0.12 * ribs * lungs
    img[_ellipse(yy, xx, 0.3, 0.1, 0.25, rng.uniform(0.24, 0.3)) < 1] = 0.7  # heart shadow
    img[np.abs(xx) < 0.07] += 0.15  # spine
    img += 0.04 * _smooth_noise(rng, size, 0.04)
    if abnormal:
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(0.05, 0.12)
            cy, cx = _pick_center(rng, lungs, r)
            img += rng.uniform(0.35, 0.5) * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 1.3) ** 2)))
    img = gaussian_filter(img, size / 160)
    return img + 0.015 * rng.standard_normal(img.shape), None


_EOSIN = np.array([0.94, 0.72, 0.82])
_HEMATOXYLIN = np.array([0.45, 0.25, 0.62])
_ATYPICAL = np.array([0.22, 0.08, 0.35])


def _nuclei(rng: np.random.Generator, size: int, centers: Array, radii: Array, irregular: float,
            grain: float) -> Array:
    """Soft coverage (0..1) of round nuclei at `centers` (pixel (y, x) pairs) with per-nucleus radii."""
    seeds = np.ones((size, size), bool)
    seeds[centers[:, 0], centers[:, 1]] = False
    radius_at = np.zeros((size, size))
    radius_at[centers[:, 0], centers[:, 1]] = radii
    # The nearest centre of each pixel tells which nucleus it may belong to and so its radius.
    dist, (iy, ix) = distance_transform_edt(seeds, return_indices=True)
    radius = radius_at[iy, ix] * (1 + irregular * _smooth_noise(rng, size, grain))
    return np.clip(radius - dist + 0.5, 0, 1)


def _histopathology(rng: np.random.Generator, size: int, abnormal: bool) -> Tuple[Array, Mask]:
    """H&E-like tissue: purple nuclei on pink stroma; anomaly: a cluster of large dark atypical nuclei."""
    stroma = 1 + 0.04 * _smooth_noise(rng, size, 0.03)[..., None]
    img = np.clip(_EOSIN * stroma, 0, 1)
    n = rng.integers(55, 85)
    centers = rng.integers(0, size, (n, 2))
    cover = _nuclei(rng, size, centers, rng.uniform(0.022, 0.034, n) * size, 0.15, 0.01)[..., None]
    img = img * (1 - cover) + _HEMATOXYLIN * cover
    if abnormal:
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        n = rng.integers(4, 9)
        spread = rng.uniform(0.12, 0.2) * size
        centers = np.clip(np.round([cy, cx] + spread * rng.standard_normal((n, 2))), 0, size - 1).astype(int)
        cover = _nuclei(rng, size, centers, rng.uniform(0.05, 0.075, n) * size, 0.3, 0.025)[..., None]
        img = img * (1 - cover) + _ATYPICAL * cover
    return img + 0.02 * rng.standard_normal(img.shape), None


GENERATORS: Dict[str, Callable[[np.random.Generator, int, bool], Tuple[Array, Mask]]] = {
    'Brain': _brain, 'Liver': _liver, 'Retina_RESC': _retina_resc,
    'Retina_OCT2017': _retina_oct2017, 'Chest': _chest, 'Histopathology': _histopathology,
}


# ---------------------------------------------------------------- writing the data set

def _save_image(array: Array, path: Path) -> None:
    """An image in [0, 1] as 8 bits, in the format of the path's suffix. JPEGs at quality 95 keep the
    lesions crisp (PNG takes no quality); PIL gives the same bytes for the same pixels."""
    Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8)).save(path, quality=95)


def _image_rng(seed: int, obj: str, split: str, cls: str, index: int) -> np.random.Generator:
    # crc32 of the name, not hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(obj.encode()), SPLITS.index(split), CLASSES.index(cls), index])


def image_name(split: str, cls: str, index: int) -> str:
    return f'{PREFIX[split, cls]}{index:03d}.png'


def _write_class(root: Path, obj: str, split: str, cls: str, count: int, seed: int, size: int) -> List[str]:
    img_dir = root / split / cls / 'img'
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir = root / split / cls / 'anomaly_mask'
    if cls == ABNORMAL_FOLDER and has_masks(obj):
        mask_dir.mkdir(exist_ok=True)
    names = [image_name(split, cls, i) for i in range(count)]
    for i, name in enumerate(names):
        img, mask = GENERATORS[obj](_image_rng(seed, obj, split, cls, i), size, cls == 'Ungood')
        _save_image(img, img_dir / name)
        if mask is not None:
            _save_image(mask.astype(float), mask_dir / name)
    return names


def _write_seed_lists(seed_dir: Path, obj: str, names: Dict[str, List[str]], seed: int,
                      shots: Sequence[int], iterations: int) -> None:
    """`<k>-shot.txt` files in the authors' format: lines `a-<i>: ...` then `n-<i>: ...` per draw."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    for k in shots:
        if k > min(len(v) for v in names.values()):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(obj.encode()), k])
        lines = []
        for i in range(iterations):
            for tag, cls in (('a', 'Ungood'), ('n', 'good')):
                drawn = rng.choice(len(names[cls]), size=k, replace=False)
                lines.append(f'{tag}-{i}: ' + ' '.join(names[cls][j] for j in drawn))
        (seed_dir / f'{k}-shot.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')


def generate(out_dir: Path, seed: int = 0, size: int = 64, n_test: int = 12, n_valid: int = 8,
             shots: Sequence[int] = (1, 2, 4), iterations: int = 3, objects: Sequence[str] = OBJECTS) -> Path:
    """Write the synthetic data set under `out_dir` (files already there are overwritten, not removed)."""
    unknown = [o for o in objects if o not in OBJECTS]
    if unknown:
        raise ValueError(f'unknown objects {unknown}: choose from {", ".join(OBJECTS)}')
    if seed < 0 or size < 16 or n_test < 1 or n_valid < 1 or iterations < 1 or min(shots, default=1) < 1:
        raise ValueError('need seed >= 0, size >= 16, and n_test, n_valid, iterations, shots >= 1')
    out_dir = Path(out_dir)
    for obj in objects:
        root = out_dir / f'{obj}_AD'
        for cls in CLASSES:
            _write_class(root, obj, 'test', cls, n_test, seed, size)
        # The few-shot support images are drawn from the valid split.
        valid = {cls: _write_class(root, obj, 'valid', cls, n_valid, seed, size) for cls in CLASSES}
        _write_seed_lists(out_dir / 'fewshot_seed' / obj, obj, valid, seed, shots, iterations)
    return out_dir


# ---------------------------------------------------------------- MVTec AD and VisA layouts
# Categories of the other layouts: the generators with pixel masks (both layouts have a mask for every
# anomalous image), under category-style names ('_' and a variant number, as MVTec AD's and VisA's).
CATEGORY_GENERATORS = {'brain_mri': 'Brain', 'liver_ct1': 'Liver', 'retina_oct': 'Retina_RESC'}
CATEGORIES = tuple(CATEGORY_GENERATORS)
# Two defect folders whose files share names, as MVTec AD's do.
DEFECTS = ('lesion_a', 'lesion_b')
LAYOUTS = ('bmad', 'mvtec', 'visa')


def _category_image(seed: int, size: int, category: str, split: str, kind: str, index: int) -> Tuple[Array, Mask]:
    """Image `index` of a category's `split` and `kind` ('good' or a defect) and its mask (None when good)."""
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(f'{split}/{kind}'.encode()), index])
    return GENERATORS[CATEGORY_GENERATORS[category]](rng, size, kind != NORMAL_FOLDER)


def _check_counts(size: int, n_train: int, n_test: int, categories: Sequence[str]) -> None:
    unknown = [c for c in categories if c not in CATEGORY_GENERATORS]
    if unknown:
        raise ValueError(f'unknown categories {unknown}: choose from {", ".join(CATEGORIES)}')
    if size < 16 or n_train < 1 or n_test < len(DEFECTS):
        raise ValueError(f'need size >= 16, n_train >= 1 and n_test >= {len(DEFECTS)} (one image per defect)')


def _anomalies_per_defect(n_test: int) -> List[int]:
    """`n_test` anomalous test images spread over DEFECTS, the first ones getting the remainder."""
    return [n_test // len(DEFECTS) + (i < n_test % len(DEFECTS)) for i in range(len(DEFECTS))]


def generate_mvtec(out_dir: Path, seed: int = 0, size: int = 64, n_train: int = 6, n_test: int = 6,
                   categories: Sequence[str] = CATEGORIES) -> Path:
    """MVTec AD's layout: `<category>/train/good/NNN.png`, `test/good/NNN.png`, `test/<defect>/NNN.png`
    and `ground_truth/<defect>/NNN_mask.png` (0/255); `n_test` normal and `n_test` anomalous test images."""
    _check_counts(size, n_train, n_test, categories)
    for category in categories:
        root = Path(out_dir) / category
        folders = [('train', NORMAL_FOLDER, n_train), ('test', NORMAL_FOLDER, n_test)]
        folders += [('test', defect, count) for defect, count in zip(DEFECTS, _anomalies_per_defect(n_test))]
        for split, kind, count in folders:
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                img, mask = _category_image(seed, size, category, split, kind, index)
                _save_image(img, root / split / kind / f'{index:03d}.png')
                if mask is not None:
                    (root / 'ground_truth' / kind).mkdir(parents=True, exist_ok=True)
                    _save_image(mask.astype(float), root / 'ground_truth' / kind / f'{index:03d}_mask.png')
    return Path(out_dir)


def generate_visa(out_dir: Path, seed: int = 0, size: int = 64, n_train: int = 6, n_test: int = 6,
                  categories: Sequence[str] = CATEGORIES) -> Path:
    """VisA's layout: `<category>/Data/Images/{Normal,Anomaly}/*.JPG`, masks `Data/Masks/Anomaly/*.png`
    holding labels 0/1 (not 0/255), and `split_csv/1cls.csv` putting `n_train` normal images in the
    train split and `n_test` normal and `n_test` anomalous ones in the test split."""
    _check_counts(size, n_train, n_test, categories)
    out_dir = Path(out_dir)
    rows = []
    for category in categories:
        images, masks = Path(category) / 'Data' / 'Images', Path(category) / 'Data' / 'Masks' / 'Anomaly'
        for folder in (images / 'Normal', images / 'Anomaly', masks):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
        # Normal images are numbered across both splits, as in VisA's single Normal folder.
        for index in range(n_train + n_test):
            split = 'train' if index < n_train else 'test'
            img, _ = _category_image(seed, size, category, 'normal', NORMAL_FOLDER, index)
            _save_image(img, out_dir / images / 'Normal' / f'{index:04d}.JPG')
            rows.append((category, split, 'normal', (images / 'Normal' / f'{index:04d}.JPG').as_posix(), ''))
        for index in range(n_test):
            img, mask = _category_image(seed, size, category, 'anomaly', DEFECTS[0], index)
            _save_image(img, out_dir / images / 'Anomaly' / f'{index:03d}.JPG')
            Image.fromarray(mask.astype(np.uint8)).save(out_dir / masks / f'{index:03d}.png')
            rows.append((category, 'test', 'anomaly', (images / 'Anomaly' / f'{index:03d}.JPG').as_posix(),
                         (masks / f'{index:03d}.png').as_posix()))
    (out_dir / 'split_csv').mkdir(parents=True, exist_ok=True)
    with open(out_dir / 'split_csv' / '1cls.csv', 'w', newline='', encoding='utf-8') as handle:
        writer = csv.writer(handle)
        writer.writerow(('object', 'split', 'label', 'image', 'mask'))
        writer.writerows(rows)
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = FlagParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True, help='folder to write the data set to')
    parser.add_argument('--layout', choices=LAYOUTS, default='bmad',
                        help="bmad: BMAD's <Obj>_AD folders and seed lists; mvtec: MVTec AD's; visa: VisA's with "
                             f"split_csv/1cls.csv (mvtec and visa: categories {', '.join(CATEGORIES)})")
    parser.add('seed', default=0, help='the same seed gives byte-identical files')
    parser.add('size', default=64, help='image side in pixels')
    parser.add('n_test', default=12, help='test images per class (good, Ungood)')
    parser.add('n_valid', default=8, help='bmad: valid images per class (good, Ungood)')
    parser.add('n_train', default=8, help='mvtec, visa: normal training images per category')
    parser.add('shots', default=[1, 2, 4], help='bmad: k of the k-shot seed lists')
    parser.add('iterations', default=3, help='bmad: draws per seed list')
    parser.add_argument('--objects', nargs='+', default=list(OBJECTS), choices=OBJECTS, help='bmad: objects')
    args = parse_or_exit(parser, argv)
    if args.layout == 'bmad':
        out = generate(args.out, args.seed, args.size, args.n_test, args.n_valid, args.shots, args.iterations,
                       args.objects)
        n_images, what = len(args.objects) * 2 * (args.n_test + args.n_valid), f'{len(args.objects)} objects'
    else:
        write = generate_mvtec if args.layout == 'mvtec' else generate_visa
        out = write(args.out, args.seed, args.size, args.n_train, args.n_test)
        n_images, what = len(CATEGORIES) * (args.n_train + 2 * args.n_test), f'{len(CATEGORIES)} categories'
    print(f'wrote {n_images} synthetic {args.size}x{args.size} images of {what} ({args.layout} layout, '
          f'seed {args.seed}) to {out}')
    return out


if __name__ == '__main__':
    main()
