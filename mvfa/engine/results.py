"""What a run writes: the `--results` JSON of an evaluation, with the flags that made it."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from mvfa.method import intervals
from mvfa.common.config import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from mvfa.engine.cost import RunCost
from mvfa.engine.evaluation import Evaluation
from mvfa.method.metrics import image_metrics, pixel_metrics
from mvfa.common.flags import flag_values
from mvfa.common.outputs import atomic_write


def extra_metrics(evaluation: Evaluation) -> Dict[str, Optional[float]]:
    """AP, F1-max and (pixel) AUPRO beside the AUROCs; pixel ones are None for objects without masks
    (and for a selection kept from before a --resume, which stores no per-pixel arrays)."""
    image = image_metrics(evaluation.labels, evaluation.image_scores)
    pixel = pixel_metrics(evaluation.masks, evaluation.pixel_scores) if evaluation.pixel_scores is not None else {}
    return {'image_ap': image['ap'], 'image_f1_max': image['f1_max'], 'pixel_ap': pixel.get('ap'),
            'pixel_f1_max': pixel.get('f1_max'), 'pixel_aupro': pixel.get('aupro')}


def bootstrap_record(args: argparse.Namespace, evaluation: Evaluation) -> Optional[Dict]:
    """95 % intervals of the AUROCs (mvfa.method.intervals), with their replicates so that two files of the same
    test images and seed compare paired; None with `--bootstrap 0`. Image and pixel AUROC draw from the
    streams '<obj>:image' and '<obj>:pixel'. Flags parsed without the bootstrap flags get the defaults."""
    resamples = getattr(args, 'bootstrap', BOOTSTRAP_RESAMPLES)
    if resamples == 0:
        return None
    seed = getattr(args, 'bootstrap_seed', BOOTSTRAP_SEED)
    image = intervals.image_auroc_interval(evaluation.labels, evaluation.image_scores, resamples,
                                           intervals.generator(seed, f'{args.obj}:image'))
    pixel = None
    if evaluation.pixel_scores is not None:
        pixel = intervals.pixel_auroc_interval(evaluation.masks, evaluation.pixel_scores, resamples,
                                               intervals.generator(seed, f'{args.obj}:pixel')).record()
    return {'method': 'percentile bootstrap over test images, resampled within each class (pixel AUROC: images '
                      f'resampled, pixel scores in {intervals.DEFAULT_BINS} bins)',
            'resamples': resamples, 'seed': seed, 'stream': args.obj, 'confidence': intervals.CONFIDENCE,
            'bins': intervals.DEFAULT_BINS, 'image_auroc': image.record(), 'pixel_auroc': pixel}


@dataclass(frozen=True)
class Provenance:
    """What a results file says about how its numbers were made, beyond the flags."""
    images: Sequence[Path]  # the scored images, in the order of the scores
    device: str
    precision: str  # the autocast dtype actually used (`--precision auto` resolved)
    selection: Optional[str]  # how the adapters were selected; None: unknown (the authors' checkpoints)
    selected: Optional[str]  # the step they were taken at
    support: Optional[Sequence[Path]] = None  # few-shot: the support images
    checkpoint: Optional[Path] = None  # test scripts: the adapters scored
    cost: Optional[RunCost] = None  # the run's clock and device (mvfa/engine/cost.py); None: no `cost` recorded


def results_record(args: argparse.Namespace, setting: str, evaluation: Evaluation, made: Provenance) -> Dict:
    """The contents of a `--results` file."""
    return {
        'obj': args.obj, 'setting': setting, 'shot': getattr(args, 'shot', None),
        'selection': made.selection, 'selected': made.selected,
        'checkpoint': None if made.checkpoint is None else str(made.checkpoint),
        'device': made.device, 'precision': made.precision,
        'normalisation': getattr(args, 'normalisation', 'test'),
        'image_auroc': evaluation.image_auroc, 'pixel_auroc': evaluation.pixel_auroc, **extra_metrics(evaluation),
        'bootstrap': bootstrap_record(args, evaluation),
        'image_scores': evaluation.image_scores.tolist(), 'labels': evaluation.labels.tolist(),
        'images': [str(path) for path in made.images],
        'support_images': None if made.support is None else [str(path) for path in made.support],
        'cost': None if made.cost is None else made.cost.record(evaluation),
        'flags': flag_values(args),
    }


def write_results(args: argparse.Namespace, setting: str, evaluation: Evaluation, made: Provenance) -> None:
    """Write the `--results` file, if one was asked for: only then are AP, F1-max and AUPRO computed."""
    if args.results is None:
        return
    atomic_write(args.results, json.dumps(results_record(args, setting, evaluation, made), indent=2))
    print(f'results written to {args.results}')
