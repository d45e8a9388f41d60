"""Score your own images with MVFA adapters: a CSV/JSON of scores and a heatmap per image.

    python predict.py --checkpoint ckpt/few-shot/Brain.pth --obj Brain --out results/ scans/
    python predict.py --checkpoint ckpt/zero-shot/Brain.pth --obj 'brain MRI' \\
        --reference normal_scans/ --out results/ scans/          # normal-only few-shot

Inputs and references are image files or folders (searched recursively); any size, grayscale,
RGB, RGBA, 16-bit PNG or JPEG. `--obj` names the object in the text prompts: one of the BMAD
objects or any free text. Checkpoints are ours or the authors' released ones (same format).

Image score: the det head, as the paper's classification path (text probability and memory-bank
distance averaged over patches); it is trained for every object, where the seg head is trained
only on objects with masks. Heatmap: the seg head's pixel map of the same parts.

What the score means:
- Without --reference (zero-shot): the abnormal probability the text prompts give, averaged over
  patches and over the adapted levels, in [0, 1]. It is not calibrated: compare it between images
  scored with the same checkpoint and --obj only.
- With --reference (at least 2 normal images; zero-shot text fused with the few-shot memory bank
  of the augmented references): each part is standardised by the reference images themselves,
  then the two are averaged with the paper's 0.5 / 0.5 weights:
      score = 0.5 * (zero - mean_ref(zero)) / std_ref(zero) + 0.5 * (few - mean_ref(few)) / std_ref(few)
  mean_ref and std_ref are over the un-augmented reference images. A reference's few-shot part is
  its distance to the bank of the *other* references (leave-one-out), as its own copies would
  give 0; so that images and references are measured alike, an image's few-shot part is its
  distance to a bank of k - 1 of the k references, averaged over the k ways of leaving one out
  (per patch: ((k - 1) * nearest + second nearest reference) / k, one search of the whole bank).
  So 0 is a typical normal image and the unit is the spread among the references: a score of 3
  is three reference standard deviations above normal. The same references give the same
  scale, so scores compare across calls; more references give a steadier scale.
Heatmaps use the same units per pixel (with references: red at 4 reference
standard deviations, blue at the reference mean; without: the probability, red at 1), drawn on
each input at its own size (the longer side capped at 1024 px) beside a colour bar of that scale.
"""
from __future__ import annotations

import argparse
import csv
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
from dataset.bmad import IMAGE_SUFFIXES, DataError, load_image, open_image
from mvfa import scoring
from mvfa.config import PAPER
from mvfa.checkpoint import MODEL_FLAGS, adopt_model_flags
from mvfa.cli import add_model_arguments
from mvfa.flags import FlagError, FlagParser
from mvfa.memory_bank import build_memory_bank
from mvfa.session import Session, run
from mvfa.visualize import Tick, at_image_size, write_panel
from utils import augment

# The fewest references that give a spread: the few-shot part of a reference is measured against the others.
MIN_REFERENCES = 2
# Floor of a reference spread, so identical references do not divide by zero.
MIN_SPREAD = 1e-6
# Heatmap colour scale with references: full red this many reference standard deviations above normal.
HEATMAP_FULL_SCALE = 4.0
CSV_COLUMNS = ('path', 'score', 'zero_shot', 'few_shot', 'zero_shot_raw', 'few_shot_raw', 'heatmap')


def find_images(paths: Sequence[Path], what: str) -> List[Path]:
    """Image files named directly or found under folders (recursively), in a stable order."""
    found: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f'{what} {path} does not exist')
    if not found:
        raise DataError(f'no {what} images ({", ".join(IMAGE_SUFFIXES)}) in {", ".join(map(str, paths))}')
    return found


class ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], img_size: int) -> None:
        self.paths, self.img_size = list(paths), img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return load_image(self.paths[index], self.img_size)


@dataclass
class Parts:
    """Raw scores of a batch: per image (B,) and per pixel (B, S, S), each averaged over levels."""
    zero: Tensor
    zero_map: Tensor
    few: Optional[Tensor] = None
    few_map: Optional[Tensor] = None


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
    """Spreads of the reference images' parts: image scores and pixel maps, zero- and few-shot."""
    references: int
    zero: Spread
    few: Spread
    zero_map: Spread
    few_map: Spread

    def score(self, parts: Parts) -> Tuple[Tensor, Tensor, Tensor]:
        """(fused, zero-shot, few-shot) standardised image scores."""
        zero, few = self.zero.standardise(parts.zero), self.few.standardise(parts.few)
        return PAPER.zero_shot_weight * zero + PAPER.few_shot_weight * few, zero, few

    def heatmap(self, parts: Parts) -> Tensor:
        fused = (PAPER.zero_shot_weight * self.zero_map.standardise(parts.zero_map)
                 + PAPER.few_shot_weight * self.few_map.standardise(parts.few_map))
        return fused / HEATMAP_FULL_SCALE


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
        parts = [score_parts(model, images[i:i + 1], text_features, self.banks.leaving_out(i))
                 for i in tqdm(range(len(images)), desc='references', leave=False)]
        self.calibration = Calibration(
            references=len(images),
            zero=Spread.of(torch.cat([p.zero for p in parts])), few=Spread.of(torch.cat([p.few for p in parts])),
            zero_map=Spread.of(torch.cat([p.zero_map for p in parts])),
            few_map=Spread.of(torch.cat([p.few_map for p in parts])))


def heatmap_paths(images: Sequence[Path], folder: Path) -> List[Path]:
    """`<folder>/<stem>.png` per input, numbered where stems repeat (same name in two folders)."""
    paths, taken = [], set()
    for image in images:
        name, copy = f'{image.stem}.png', 1
        while name in taken:
            name, copy = f'{image.stem}-{copy}.png', copy + 1
        taken.add(name)
        paths.append(folder / name)
    return paths


def colour_scale(calibrated: bool) -> List[Tick]:
    """Ticks of the heatmap's colour bar: reference standard deviations above normal, or the zero-shot probability."""
    if calibrated:
        return [(sd / HEATMAP_FULL_SCALE, f'{sd} sd') for sd in range(math.floor(HEATMAP_FULL_SCALE) + 1)]
    return [(p, f'{p:g}') for p in (0.0, 0.25, 0.5, 0.75, 1.0)]


def write_heatmap(path: Path, source: Path, heatmap: Tensor, ticks: Sequence[Tick]) -> None:
    """Input | JET overlay of `heatmap` (0 blue, 1 and above red) | colour bar, at the size of the input as read."""
    image, anomaly_map = at_image_size(np.asarray(open_image(source)), heatmap.clamp(0, 1).numpy())
    write_panel(path, image, anomaly_map, ticks=ticks)


def build_parser() -> FlagParser:
    p = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', nargs='*', type=Path,
                   help='image files or folders to score; after a flag that takes several values '
                        '(--reference, --features_list), put them after -- or give them with --input')
    p.add_argument('--input', nargs='+', action='extend', type=Path, default=[], dest='input_paths',
                   help='image files or folders to score, anywhere on the line (with or instead of the positional)')
    p.add_argument('--checkpoint', type=Path, required=True,
                   help="adapter weights (.pth, ours or the authors'); a zero-shot one with --reference: normal-only")
    p.add_argument('--obj', required=True, help='object for the text prompts: a BMAD object name or any free text')
    p.add_argument('--reference', type=Path, nargs='+', default=None,
                   help='normal images (files or folders, at least 2): memory bank and score calibration')
    p.add_argument('--out', type=Path, required=True, help='folder for scores.csv, scores.json and heatmaps/')
    p.add_argument('--batch_size', type=int, default=16, help='images per batch (scores do not depend on it)')
    add_model_arguments(p)
    return p


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    """Score the inputs; returns the rows written to scores.csv / scores.json."""
    arguments = build_parser()
    args = arguments.parse_args(argv)
    adopt_model_flags(args, arguments.given(argv, MODEL_FLAGS), args.checkpoint)
    if not args.inputs + args.input_paths:
        raise FlagError('no images to score: name files or folders after the flags (or after --), or with --input')
    inputs = find_images(args.inputs + args.input_paths, 'input')
    references = find_images(args.reference, 'reference') if args.reference else None
    session = Session(args)
    model = session.load_model(args.checkpoint)
    text_features = session.text_features(args.obj)
    reference = None
    if references is not None:
        reference = Reference(model, torch.stack([load_image(p, args.img_size) for p in references]), text_features,
                              args.batch_size)

    heatmaps = heatmap_paths(inputs, args.out / 'heatmaps')
    heatmaps[0].parent.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(ImageFiles(inputs, args.img_size), batch_size=args.batch_size, **session.loader_options())
    banks = None if reference is None else reference.banks
    ticks = colour_scale(calibrated=reference is not None)
    rows: List[Dict] = []
    for images in tqdm(loader, desc='predict'):
        parts = score_parts(model, images, text_features, banks)
        if reference is None:
            score, zero, few, maps = parts.zero, parts.zero, None, parts.zero_map
        else:
            (score, zero, few), maps = reference.calibration.score(parts), reference.calibration.heatmap(parts)
        for i in range(len(images)):
            index = len(rows)
            write_heatmap(heatmaps[index], inputs[index], maps[i].cpu(), ticks)
            rows.append({'path': str(inputs[index]), 'score': score[i].item(), 'zero_shot': zero[i].item(),
                         'few_shot': None if few is None else few[i].item(), 'zero_shot_raw': parts.zero[i].item(),
                         'few_shot_raw': None if parts.few is None else parts.few[i].item(),
                         'heatmap': str(heatmaps[index])})
    write_scores(args, rows, reference, references)
    return rows


def write_scores(args: argparse.Namespace, rows: List[Dict], reference: Optional[Reference],
                 references: Optional[List[Path]]) -> None:
    with open(args.out / 'scores.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({key: '' if value is None else value for key, value in row.items()} for row in rows)
    record = {
        'mode': 'zero-shot' if reference is None else 'zero-shot + few-shot (reference memory bank)',
        'score': ('zero-shot abnormal probability in [0, 1], uncalibrated' if reference is None else
                  '0.5 * zero-shot z + 0.5 * few-shot z, in standard deviations of the references (0: normal)'),
        'obj': args.obj, 'checkpoint': str(args.checkpoint),
        'references': None if references is None else [str(p) for p in references],
        'calibration': None if reference is None else asdict(reference.calibration),
        'images': rows,
    }
    (args.out / 'scores.json').write_text(json.dumps(record, indent=2), encoding='utf-8')
    print(f'{len(rows)} images scored: {args.out / "scores.csv"}, {args.out / "scores.json"}, '
          f'{args.out / "heatmaps"}/')


if __name__ == '__main__':
    raise SystemExit(run(main))
