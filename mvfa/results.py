"""What a run writes: the `--results` JSON of an evaluation, with the flags that made it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

from mvfa.evaluation import Evaluation
from mvfa.metrics import image_metrics, pixel_metrics


def flag_values(args: argparse.Namespace) -> Dict:
    """The flags as JSON values."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def extra_metrics(evaluation: Evaluation) -> Dict[str, Optional[float]]:
    """AP, F1-max and (pixel) AUPRO beside the AUROCs; pixel ones are None for objects without masks
    (and for a selection kept from before a --resume, which stores no per-pixel arrays)."""
    image = image_metrics(evaluation.labels, evaluation.image_scores)
    pixel = pixel_metrics(evaluation.masks, evaluation.pixel_scores) if evaluation.pixel_scores is not None else {}
    return {'image_ap': image['ap'], 'image_f1_max': image['f1_max'], 'pixel_ap': pixel.get('ap'),
            'pixel_f1_max': pixel.get('f1_max'), 'pixel_aupro': pixel.get('aupro')}


def results_record(args: argparse.Namespace, setting: str, evaluation: Evaluation, **extra) -> Dict:
    """The contents of a `--results` file; `selection` is the training scripts' --selection, else None."""
    return {
        'obj': args.obj, 'setting': setting, 'shot': getattr(args, 'shot', None),
        'selection': getattr(args, 'selection', None),
        'image_auroc': evaluation.image_auroc, 'pixel_auroc': evaluation.pixel_auroc, **extra_metrics(evaluation),
        'image_scores': evaluation.image_scores.tolist(), 'labels': evaluation.labels.tolist(),
        **extra, 'flags': flag_values(args),
    }


def write_results(args: argparse.Namespace, setting: str, evaluation: Evaluation, **extra) -> None:
    """Write the `--results` file, if one was asked for: only then are AP, F1-max and AUPRO computed."""
    if args.results is None:
        return
    args.results.parent.mkdir(parents=True, exist_ok=True)
    record = results_record(args, setting, evaluation, **extra)
    args.results.write_text(json.dumps(record, indent=2), encoding='utf-8')
    print(f'results written to {args.results}')
