"""What predict.py does once its flags are parsed: find the images, score them (with references: a
calibrated fusion of text and memory-bank scores), write scores.csv, scores.json and heatmaps.
predict.py's docstring says what the scores mean."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from CLIP import MultiLevelAdaptedCLIP
from dataset.readers import DataError, image_transform
from dataset.volumes import Scan
from mvfa.method import scoring
from mvfa.method.memory_bank import build_memory_bank
from mvfa.common.outputs import atomic_write_all, csv_text
from mvfa.runs.scan_inputs import InputImage
from mvfa.runs.scan_maps import VolumeMaps
from mvfa.engine.session import Session
from mvfa.engine.visualize import ColourScale, Drawing, panel, per_image_scale, unique_names, write_panel
from utils import augment

# The fewest references that give a spread: the few-shot part of a reference is measured against the others.
MIN_REFERENCES = 2
# Floor of a reference spread, so identical references do not divide by zero.
MIN_SPREAD = 1e-6
# Heatmap colour scale with references: full red this many reference standard deviations above normal.
HEATMAP_FULL_SCALE = 4.0
# With references the maps are in reference standard deviations: one fixed scale, so colours compare across
# images. Without, they are raw probabilities, often all near zero: each image gets its own range.
REFERENCE_SCALE = ColourScale(0.0, HEATMAP_FULL_SCALE, 'fixed',
                              f'colours: pixel score in reference standard deviations above normal, 0 (blue) to '
                              f'{HEATMAP_FULL_SCALE:g} (red) and above: a fixed scale, comparable across images',
                              unit=' sd')
ZERO_SHOT_MAP = 'zero-shot abnormal probability'
CSV_COLUMNS = ('path', 'slice', 'score', 'zero_shot', 'few_shot', 'zero_shot_raw', 'few_shot_raw', 'heatmap')


class ImageFiles(Dataset):
    def __init__(self, images: Sequence[InputImage], img_size: int) -> None:
        self.images, self.transform = list(images), image_transform(img_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.images[index].picture())


@dataclass
class Parts:
    """Raw scores of a batch: per image (B,) and per pixel (B, S, S), each averaged over levels."""
    zero: Tensor
    zero_map: Tensor
    few: Optional[Tensor] = None
    few_map: Optional[Tensor] = None

    @torch.inference_mode()  # the parts are inference tensors
    def put(self, index: int, other: 'Parts') -> None:
        """Replace image `index` of this batch with the one image of `other`."""
        for name in ('zero', 'zero_map', 'few', 'few_map'):
            getattr(self, name)[index] = getattr(other, name)[0]


@dataclass
class ReferenceBanks:
    """Per level, one memory bank per reference image (its augmented copies), seg and det heads.

    A patch's distance is measured against banks of k - 1 references: with `left_out` = i the
    bank without reference i; with None the mean over the k banks that each leave one out.
    """
    seg: List[List[Tensor]]
    det: List[List[Tensor]]
    left_out: Optional[int] = None

    def leaving_out(self, reference: int) -> 'ReferenceBanks':
        return replace(self, left_out=reference)

    def patch_distances(self, head: str, level: int, patches: Tensor) -> Tensor:
        """(B, L, C) patches -> (B, L): 1 - cosine similarity to the nearest token of k - 1 references."""
        banks = getattr(self, head)[level]
        queries = patches.reshape(-1, patches.shape[-1])
        similarity = torch.stack([scoring.nearest_similarity(queries, bank) for bank in banks]).reshape(
            len(banks), *patches.shape[:2])
        if self.left_out is not None:
            similarity[self.left_out] = -math.inf
            nearest = similarity.amax(dim=0)
        else:
            # k - 1 of the k banks hold the nearest reference; the one without it finds the second nearest.
            best, second = similarity.topk(2, dim=0).values
            nearest = ((len(banks) - 1) * best + second) / len(banks)
        return 1.0 - nearest


@torch.inference_mode()
def score_parts(model: MultiLevelAdaptedCLIP, images: Tensor, text_features: Tensor,
                banks: Optional[ReferenceBanks]) -> Parts:
    """The batch's det-head image scores and seg-head maps, averaged over levels."""
    levels = len(model.features)
    with model.autocast():
        seg, det = model.adapter_tokens(images.to(model.device))
        scores = scoring.score_batch(seg, det, text_features, model.img_size, banks, image_scores=True,
                                     map_head='seg', config=model.config)
    parts = Parts(zero=scores.zero_image / levels, zero_map=scores.zero_map / levels)
    if banks is not None:
        parts.few, parts.few_map = scores.few_image / levels, scores.few_map / levels
    return parts


@dataclass
class Spread:
    mean: float
    std: float

    @classmethod
    def of(cls, values: Tensor) -> 'Spread':
        return cls(values.mean().item(), max(values.float().std().item(), MIN_SPREAD))

    def standardise(self, values: Tensor) -> Tensor:
        return (values - self.mean) / self.std


@dataclass
class Calibration:
    """Spreads of the reference images' parts (image scores and pixel maps, zero- and few-shot), and
    the fusion weights of the model's config."""
    references: int
    zero_shot_weight: float
    few_shot_weight: float
    zero: Spread
    few: Spread
    zero_map: Spread
    few_map: Spread

    def score(self, parts: Parts) -> Tuple[Tensor, Tensor, Tensor]:
        """(fused, zero-shot, few-shot) standardised image scores."""
        zero, few = self.zero.standardise(parts.zero), self.few.standardise(parts.few)
        return self.zero_shot_weight * zero + self.few_shot_weight * few, zero, few

    def pixel_scores(self, parts: Parts) -> Tensor:
        """The fused map in reference standard deviations, as the image scores."""
        return (self.zero_shot_weight * self.zero_map.standardise(parts.zero_map)
                + self.few_shot_weight * self.few_map.standardise(parts.few_map))


class Reference:
    """The memory banks of the augmented normal references and the calibration they give."""

    def __init__(self, model: MultiLevelAdaptedCLIP, images: Tensor, text_features: Tensor, batch_size: int) -> None:
        if len(images) < MIN_REFERENCES:
            raise DataError(f'--reference needs at least {MIN_REFERENCES} normal images to calibrate the '
                            f'few-shot score (leave-one-out), got {len(images)}')
        # One bank per reference, so each can be left out of the bank its own score is measured against.
        banks = [build_memory_bank(model, augment(image[None])[0], batch_size) for image in images]
        self.banks = ReferenceBanks([list(level) for level in zip(*(b.seg for b in banks))],
                                    [list(level) for level in zip(*(b.det for b in banks))])
        # Each reference's parts against the banks of the others: the values the calibration is made of, and
        # the scores of an input that is one of the references (against its own copies it would score far below
        # every normal image).
        self.parts = [score_parts(model, images[i:i + 1], text_features, self.banks.leaving_out(i))
                      for i in tqdm(range(len(images)), desc='references', leave=False)]
        self.calibration = Calibration(
            references=len(images),
            zero_shot_weight=model.config.zero_shot_weight, few_shot_weight=model.config.few_shot_weight,
            zero=Spread.of(torch.cat([p.zero for p in self.parts])),
            few=Spread.of(torch.cat([p.few for p in self.parts])),
            zero_map=Spread.of(torch.cat([p.zero_map for p in self.parts])),
            few_map=Spread.of(torch.cat([p.few_map for p in self.parts])))


def heatmap_paths(stems: Sequence[str], folder: Path, suffix: str = '.png') -> List[Path]:
    """`<folder>/<stem><suffix>` per input, numbered where stems repeat (same name in two folders)."""
    return [folder / name for name in unique_names(stems, suffix)]


def heatmap_scale(heatmap: np.ndarray, calibrated: bool) -> ColourScale:
    """The fixed reference scale, or without references the map's own range (see REFERENCE_SCALE)."""
    return REFERENCE_SCALE if calibrated else per_image_scale(heatmap, ZERO_SHOT_MAP)


def heatmap_header(source: InputImage, score: float, calibrated: bool) -> str:
    name = source.path.name if source.index is None else f'{source.path.name} {source.axis} slice {source.index}'
    return (f'{name} | score: {score:.2f} sd above the references' if calibrated else
            f'{name} | score: {score:.3g} ({ZERO_SHOT_MAP}, uncalibrated)')


def write_heatmap(path: Path, source: InputImage, heatmap: Tensor, score: float, calibrated: bool) -> Drawing:
    """Titled panels input | JET overlay of `heatmap` | colour bar, at the size of the input as read; the
    score above them, what the colours mean under them. Returns the figure written."""
    anomaly_map = heatmap.numpy()
    drawing = panel(np.asarray(source.picture()), anomaly_map, heatmap_scale(anomaly_map, calibrated),
                    heatmap_header(source, score, calibrated))
    write_panel(path, drawing)
    return drawing


def references_among(inputs: Sequence[InputImage], references: Sequence[InputImage]) -> Dict[int, int]:
    """{input index: reference index} of the inputs that are references (the same file, or the same slice of the
    same scan, by resolved path)."""
    def key(image: InputImage) -> Tuple[Path, Optional[int]]:
        return image.path.resolve(), image.index
    by_image = {key(image): index for index, image in enumerate(references)}
    return {index: by_image[key(image)] for index, image in enumerate(inputs) if key(image) in by_image}


def predict(args: argparse.Namespace, inputs: List[InputImage], scans: Sequence[Scan],
            references: Optional[List[InputImage]]) -> List[Dict]:
    """Score `inputs` (against the normal `references`, if any), the 2-D images of the files and `scans` found by
    `find_inputs`; returns the rows written to scores.csv / scores.json. `args` already holds the model flags of
    the checkpoint's sidecar."""
    session = Session(args)
    model = session.load_model(args.checkpoint)
    text_features = session.text_features(args.obj)
    reference = None
    if references is not None:
        reference = Reference(model, torch.stack(list(ImageFiles(references, args.img_size))), text_features,
                              args.batch_size)

    heatmaps = heatmap_paths([image.name for image in inputs], args.out / 'heatmaps')
    loader = DataLoader(ImageFiles(inputs, args.img_size), batch_size=args.batch_size, **session.loader_options())
    banks = None if reference is None else reference.banks
    reference_of = references_among(inputs, references or [])
    if reference_of:
        print(f'{len(reference_of)} of the inputs are references too: each is scored against the other references '
              f'(leave-one-out), as the calibration scores it')
    rows: List[Dict] = []
    volumes = VolumeMaps(args.out / 'maps')
    for images in tqdm(loader, desc='predict'):
        parts = score_parts(model, images, text_features, banks)
        for i in range(len(images)):
            if len(rows) + i in reference_of:
                parts.put(i, reference.parts[reference_of[len(rows) + i]])
        if reference is None:
            score, zero, few, maps = parts.zero, parts.zero, None, parts.zero_map
        else:
            (score, zero, few), maps = reference.calibration.score(parts), reference.calibration.pixel_scores(parts)
        for i in range(len(images)):
            index = len(rows)
            pixel_map = maps[i].float().cpu()
            write_heatmap(heatmaps[index], inputs[index], pixel_map, score[i].item(), reference is not None)
            if inputs[index].index is not None:  # a slice of a volume: its map goes into the volume's NIfTI
                volumes.add(inputs[index], score[i].item(), pixel_map.numpy())
            rows.append({'path': str(inputs[index].path), 'slice': inputs[index].index, 'score': score[i].item(),
                         'zero_shot': zero[i].item(), 'few_shot': None if few is None else few[i].item(),
                         'zero_shot_raw': parts.zero[i].item(),
                         'few_shot_raw': None if parts.few is None else parts.few[i].item(),
                         'heatmap': str(heatmaps[index])})
    volume_records = volumes.finish(heatmap_paths(volumes.stems(), args.out / 'maps', '.nii.gz'))
    write_scores(args, rows, reference, references, scan_records(args, scans, volume_records))
    return rows


def scan_records(args: argparse.Namespace, scans: Sequence[Scan], volumes: List[Dict]) -> List[Dict]:
    """What scores.json says of each DICOM or NIfTI input: how it was read, and a volume's score and map."""
    by_path = {record['path']: record for record in volumes}
    return [{**scan.record(), 'window': args.window, **by_path.get(str(scan.path), {})} for scan in scans]


def write_scores(args: argparse.Namespace, rows: List[Dict], reference: Optional[Reference],
                 references: Optional[List[InputImage]], scans: Sequence[Dict] = ()) -> None:
    record = {
        'mode': 'zero-shot' if reference is None else 'zero-shot + few-shot (reference memory bank)',
        'score': ('zero-shot abnormal probability in [0, 1], uncalibrated' if reference is None else
                  '0.5 * zero-shot z + 0.5 * few-shot z, in standard deviations of the references (0: normal)'),
        'obj': args.obj, 'checkpoint': str(args.checkpoint),
        'references': None if references is None else [
            str(p.path) if p.index is None else f'{p.path} {p.axis} {p.index}' for p in references],
        'calibration': None if reference is None else asdict(reference.calibration),
        'images': rows,
        'scans': list(scans),
    }
    atomic_write_all({args.out / 'scores.csv': csv_text(rows, CSV_COLUMNS),
                      args.out / 'scores.json': json.dumps(record, indent=2)})
    print(f'{len(rows)} images scored: {args.out / "scores.csv"}, {args.out / "scores.json"}, '
          f'{args.out / "heatmaps"}/')
