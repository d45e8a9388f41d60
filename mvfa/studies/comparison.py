"""Intervals and paired differences of AUROCs read from results files (their `bootstrap` records).

A results file holds each AUROC's bootstrap replicates (mvfa/method/intervals.py). Files of the same test
images bootstrapped with the same resamples, seed and stream were resampled identically, so:

- the replicates of a mean over draws (or objects) are the means of their replicates, and its interval
  their percentile interval (objects are resampled independently: their streams differ);
- two rows that score the same images compare paired: the difference of their replicates.

Table cells are built here (`auroc_cell`, `difference_cell`) for reproduce.py and mvfa/studies/studies.py.

`compare_files` is the helper behind `compare.py`: any two results files of one test set, image AUROC by a
paired bootstrap (recomputed from the scores) and DeLong, pixel AUROC from the stored replicates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mvfa.method import intervals
from mvfa.common.errors import UserError

LEVELS = ('image', 'pixel')


class NotComparable(UserError):
    """Two results files that do not score the same test images, or were bootstrapped differently."""


def bootstrap_key(record: Dict) -> Optional[Tuple]:
    """What must agree for two records' replicates to be paired: resamples, seed, stream."""
    boot = record.get('bootstrap')
    return None if not boot else (boot['resamples'], boot['seed'], boot['stream'])


def replicates(record: Dict, level: str) -> Optional[np.ndarray]:
    boot = record.get('bootstrap') or {}
    interval = boot.get(f'{level}_auroc')
    return None if interval is None else np.asarray(interval['replicates'], dtype=np.float64)


def pooled_replicates(groups: Sequence[Sequence[Dict]], level: str) -> Optional[np.ndarray]:
    """Replicates of the mean over `groups` (objects) of each group's mean over its records (draws of one
    test set); None if a record has none, or a group's records were bootstrapped differently."""
    means = []
    for records in groups:
        found = [replicates(r, level) for r in records]
        if not found or any(r is None for r in found) or len({bootstrap_key(r) for r in records}) != 1:
            return None
        means.append(intervals.mean_replicates(found))
    if not means or len({m.size for m in means}) != 1:
        return None
    return intervals.mean_replicates(means)


def percent_interval(groups: Sequence[Sequence[Dict]], level: str) -> Tuple[Optional[float], Optional[float]]:
    """The 95 % interval (in %) of a table's cell: the mean over groups (objects) of means over draws."""
    pooled = pooled_replicates(groups, level)
    if pooled is None:
        return None, None
    low, high = intervals.percentile_interval(pooled)
    return 100 * low, 100 * high


def same_images(a: Dict, b: Dict) -> bool:
    return a.get('images') == b.get('images') and a.get('labels') == b.get('labels')


def mean_auroc(groups: Sequence[Sequence[Dict]], level: str) -> float:
    return float(np.mean([np.mean([r[f'{level}_auroc'] for r in records]) for records in groups]))


def paired_difference(groups_a: Sequence[Sequence[Dict]], groups_b: Sequence[Sequence[Dict]],
                      level: str) -> Optional[intervals.Difference]:
    """The difference (a - b) of two cells, each a mean over groups (objects) of means over draws; draw i
    of a group paired with draw i of the other's. None unless every pair scores the same images with the
    same bootstrap."""
    if len(groups_a) != len(groups_b) or any(len(a) != len(b) for a, b in zip(groups_a, groups_b)):
        return None
    pairs = [(a, b) for group_a, group_b in zip(groups_a, groups_b) for a, b in zip(group_a, group_b)]
    if not all(same_images(a, b) and bootstrap_key(a) == bootstrap_key(b) for a, b in pairs):
        return None
    rep_a, rep_b = pooled_replicates(groups_a, level), pooled_replicates(groups_b, level)
    if rep_a is None or rep_b is None:
        return None
    return intervals.paired_bootstrap(mean_auroc(groups_a, level), mean_auroc(groups_b, level), rep_a, rep_b)


def difference_fields(prefix: str, difference: Optional[intervals.Difference]) -> Dict[str, Optional[float]]:
    """A difference as table columns (AUROC points): `<prefix>`, `_low`, `_high`, `_p`."""
    if difference is None:
        return {prefix: None, f'{prefix}_low': None, f'{prefix}_high': None, f'{prefix}_p': None}
    return {prefix: 100 * difference.estimate, f'{prefix}_low': 100 * difference.low,
            f'{prefix}_high': 100 * difference.high, f'{prefix}_p': difference.p_value}


def difference_cell(row: Dict, prefix: str) -> str:
    """'+1.23 [+0.10, +2.40], p = 0.03', or '–'."""
    if row.get(prefix) is None:
        return '–'
    return (f"{row[prefix]:+.2f} [{row[f'{prefix}_low']:+.2f}, {row[f'{prefix}_high']:+.2f}], "
            f"p = {row[f'{prefix}_p']:.2g}")


def auroc_cell(mean: Optional[float], std: Optional[float] = None, low: Optional[float] = None,
               high: Optional[float] = None) -> str:
    """'mean [low, high]' (one draw), 'mean ± std [low, high]' (draws), without the interval where none."""
    if mean is None:
        return '–'
    text = f'{mean:.2f} ± {std:.2f}' if std is not None else f'{mean:.2f}'
    return f'{text} [{low:.2f}, {high:.2f}]' if low is not None and high is not None else text


def compare_files(path_a: Path, path_b: Path, resamples: int, seed: int) -> List[Dict]:
    """Per AUROC of two results files of the same test set: each value and the paired difference a - b."""
    import json
    a, b = (json.loads(Path(p).read_text(encoding='utf-8')) for p in (path_a, path_b))
    if a.get('images') != b.get('images'):
        raise NotComparable(f'{path_a} and {path_b} do not score the same images in the same order: '
                            'a paired comparison needs one test set')
    labels = np.asarray(a['labels'])
    scores_a, scores_b = np.asarray(a['image_scores']), np.asarray(b['image_scores'])
    rng = intervals.generator(seed, f'{a.get("obj")}:compare')
    rows = [{'metric': 'image AUROC', 'a': a['image_auroc'], 'b': b['image_auroc'],
             'paired bootstrap': intervals.paired_image_bootstrap(labels, scores_a, scores_b, resamples, rng),
             'DeLong': intervals.delong(labels, scores_a, scores_b)}]
    if a.get('pixel_auroc') is not None and b.get('pixel_auroc') is not None:
        difference = paired_difference([[a]], [[b]], 'pixel')
        rows.append({'metric': 'pixel AUROC', 'a': a['pixel_auroc'], 'b': b['pixel_auroc'],
                     'paired bootstrap': difference, 'DeLong': None})
    return rows


def comparison_text(path_a: Path, path_b: Path, rows: List[Dict]) -> str:
    lines = [f'a: {path_a}', f'b: {path_b}', '',
             '| AUROC (%) | a | b | a − b [95 % CI], p (paired bootstrap) | a − b [95 % CI], p (DeLong) |',
             '| --- | --- | --- | --- | --- |']
    for row in rows:
        tests = [row[test].text() if row[test] is not None else '–' for test in ('paired bootstrap', 'DeLong')]
        lines.append(f"| {row['metric']} | {100 * row['a']:.2f} | {100 * row['b']:.2f} | {tests[0]} | {tests[1]} |")
    if len(rows) > 1 and rows[1]['paired bootstrap'] is None:
        lines += ['', 'pixel AUROC: no paired bootstrap, as the files were not bootstrapped with the same '
                      'resamples and seed (--bootstrap, --bootstrap_seed)']
    return '\n'.join(lines) + '\n'
