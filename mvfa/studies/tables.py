"""The tables of a reproduction: per (setting, shot) the objects' metrics over their draws beside the
published numbers, with 95 % bootstrap intervals (mvfa/studies/comparison.py), how the numbers were made,
and what they cost; written as summary.md and summary.csv. The main tables' and the studies' shared rules
(`mean_and_std`, `percent`, `write_csv`) live here once.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mvfa.common.flags import MADE_WITH, flag_text
from mvfa.common.outputs import atomic_write, csv_text
from mvfa.studies.paper_results import PAPER_NAMES, PUBLISHED, SOURCE, SOURCES, published
from mvfa.studies.plan import Run

LEVELS = ('image', 'pixel')
# Every metric of a results file that the summary averages over draws.
METRICS = ('image_auroc', 'pixel_auroc', 'image_ap', 'image_f1_max', 'pixel_ap', 'pixel_aupro')


def mean_and_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n - 1; None for a single value) of the non-missing values;
    (None, None) for none. The main tables' and the studies' one rule."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def percent(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


def write_csv(path: Path, made: Dict[str, str], rows: List[Dict]) -> None:
    """Every row opens with how the numbers were made."""
    described = [{**made, **row} for row in rows]
    atomic_write(path, csv_text(described, list(described[0])))


def difference(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    return None if ours is None or theirs is None else ours - theirs


def object_row(setting: str, shot: int, obj: str, records: List[Dict], normalisation: str = 'test') -> Dict:
    """One object's line: our metrics (%) over its draws, the published AUROCs and our difference."""
    row = {'setting': setting, 'shot': shot, 'object': obj, 'paper_name': PAPER_NAMES.get(obj, obj),
           'normalisation': normalisation,
           # A checkpoint without a sidecar (the authors') does not say how it was selected.
           'selection': '/'.join(sorted({r['selection'] or 'unknown' for r in records})), 'draws': len(records)}
    for metric in METRICS:
        row[f'{metric}_mean'], row[f'{metric}_std'] = mean_and_std([percent(r.get(metric)) for r in records])
    for source in SOURCES:
        numbers = published(setting, shot, source, obj) or (None, None)
        for level, number in zip(LEVELS, numbers):
            row[f'{level}_auroc_{source}'] = number
    for level in LEVELS:
        row[f'{level}_auroc_minus_paper'] = difference(row[f'{level}_auroc_mean'], row[f'{level}_auroc_paper'])
    return row


def average_row(rows: List[Dict]) -> Dict:
    """The mean over objects of each column; a published average only where every object has one.

    Pixel columns average the objects with masks only, as the paper does.
    """
    first = rows[0]
    average = {'setting': first['setting'], 'shot': first['shot'], 'object': 'Average', 'paper_name': 'Average',
               'normalisation': first['normalisation'],
               'selection': '/'.join(sorted({r['selection'] for r in rows})),
               'draws': min(r['draws'] for r in rows)}
    for level in LEVELS:
        scored = [r for r in rows if r[f'{level}_auroc_mean'] is not None]
        for metric in METRICS:
            if metric.startswith(level):
                average[f'{metric}_mean'] = mean_and_std([r[f'{metric}_mean'] for r in scored])[0]
                average[f'{metric}_std'] = None
        for source in SOURCES:
            numbers = [r[f'{level}_auroc_{source}'] for r in scored]
            complete = bool(numbers) and None not in numbers
            average[f'{level}_auroc_{source}'] = statistics.mean(numbers) if complete else None
        average[f'{level}_auroc_minus_paper'] = difference(average[f'{level}_auroc_mean'],
                                                           average[f'{level}_auroc_paper'])
    return average


def add_intervals(row: Dict, groups: List[List[Dict]], tested: Optional[List[List[Dict]]]) -> None:
    """A row's 95 % bootstrap intervals (mvfa/studies/comparison.py): `groups` are its records per object (one
    object, or an Average's), each a list of draws; `tested`, the same cells under the test rule, gives a
    reference row its paired difference from them (None elsewhere)."""
    from mvfa.studies import comparison  # numpy and scipy: only when a table is made
    for level in LEVELS:
        scored = [records for records in groups if records[0].get(f'{level}_auroc') is not None]
        row[f'{level}_auroc_low'], row[f'{level}_auroc_high'] = comparison.percent_interval(scored, level)
        if tested is not None and scored:
            tested_scored = [records for records in tested if records[0].get(f'{level}_auroc') is not None]
            difference = comparison.paired_difference(scored, tested_scored, level)
        else:
            difference = None
        row.update(comparison.difference_fields(f'{level}_auroc_minus_test', difference))


def summarise(runs: List[Run], records: List[Dict]) -> List[Dict]:
    """Rows per (setting, shot) table: its objects in the paper's order, then their Average, each AUROC with
    its 95 % interval. Several normalisations: one row each per object and per Average, and the reference
    rows' paired difference from the test rows."""
    rows = []
    tables = list(dict.fromkeys((task.setting, task.shot) for task in runs))
    for setting, shot in tables:
        in_table = [(task, record) for task, record in zip(runs, records)
                    if (task.setting, task.shot) == (setting, shot)]
        objects = list(dict.fromkeys(task.obj for task, _ in in_table))
        normalisations = list(dict.fromkeys(task.normalisation for task, _ in in_table))
        groups = {(obj, normalisation): [record for task, record in in_table
                                         if (task.obj, task.normalisation) == (obj, normalisation)]
                  for obj in objects for normalisation in normalisations}
        paired = 'test' in normalisations and len(normalisations) > 1
        per_object: Dict[str, List[Dict]] = {}
        averages = []
        for normalisation in normalisations:
            table = [object_row(setting, shot, obj, groups[obj, normalisation], normalisation) for obj in objects]
            tested = paired and normalisation != 'test'
            for obj, row in zip(objects, table):
                add_intervals(row, [groups[obj, normalisation]], [groups[obj, 'test']] if tested else None)
            average = average_row(table)
            add_intervals(average, [groups[obj, normalisation] for obj in objects],
                          [groups[obj, 'test'] for obj in objects] if tested else None)
            per_object[normalisation], averages = table, averages + [average]
        rows += [per_object[n][i] for i in range(len(objects)) for n in normalisations] + averages
    return rows


def number_cell(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return '–'
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def table_title(setting: str, shot: int, bmad: bool = True) -> str:
    """The table's heading; `bmad` False: another data set's categories, which have no published numbers."""
    if not bmad:
        return f'{"Zero-shot" if setting == "zero-shot" else f"Few-shot, k = {shot}"} (no published numbers)'
    if setting == 'zero-shot':
        return 'Zero-shot (paper Table 1)'
    source = 'paper Table 2' if (setting, shot) in PUBLISHED else 'no published numbers'
    return f'Few-shot, k = {shot} ({source})'


def made_with(records: List[Dict]) -> Dict[str, str]:
    """How the summarised numbers were made, from the results files: each value the runs used,
    joined with ' / ' where they differ ('–' where no results file records it)."""
    def values(read: Callable[[Dict], object]) -> str:
        found = dict.fromkeys(flag_text(read(r)) for r in records if read(r) is not None)
        return ' / '.join(found) or '–'
    made = {label: values(lambda r, flag=flag: r.get('flags', {}).get(flag)) for label, flag in MADE_WITH}
    made.update(device=values(lambda r: r.get('device')), precision=values(lambda r: r.get('precision')),
                selection=values(lambda r: r.get('selection') or 'unknown'))
    return made


def made_with_text(made: Dict[str, str]) -> str:
    text = 'Made with: ' + ', '.join(f'{label} {value}' for label, value in made.items()) + '.'
    if 'none' in made['weights'].lower().split(' / '):
        text += ' **Random CLIP weights (--pretrain none): these numbers say nothing about the paper.**'
    return text


def markdown(rows: List[Dict], made: Optional[Dict[str, str]] = None) -> str:
    from mvfa.studies.comparison import auroc_cell, difference_cell  # numpy and scipy: only when a table is made
    both = len({row.get('normalisation', 'test') for row in rows}) > 1
    header = ['Object', 'Selection', 'Draws'] + (['Normalisation'] if both else [])
    for level in LEVELS:
        header += [f'{level.capitalize()} AUROC', 'Paper', "Authors' re-run", 'Ours − paper']
        header += ['Reference − test'] if both else []
    lines = ['# MVFA reproduction: AUROC (%)', '']
    if made is not None:
        lines += [made_with_text(made), '']
    lines += [f'Published numbers: {SOURCE}. Ours: mean ± sample std over the draws of the support set '
             '(no ± for one draw), then [95 % bootstrap interval over test images] of that mean: how far it could '
             'move on another test set of the same size, the draws held fixed (README "Confidence intervals"). '
             'Selection: the model selection each number used (test: best epoch on the '
             'test set, as the paper; valid: best on valid/ minus the support images; last: final epoch). '
             'Pixel AUROC only for the objects with masks; the Average row averages the objects shown.']
    if both:
        lines += ['', 'Normalisation: test, min-max over the test set before fusion (the authors\'); reference, '
                      'each image on its own, by the normal support images. Reference − test: the paired '
                      'difference on the same test images, [95 % interval], p (paired bootstrap).']
    bmad = all(row['object'] in PAPER_NAMES for row in rows if row['object'] != 'Average')
    current = None
    for row in rows:
        if (row['setting'], row['shot']) != current:
            current = row['setting'], row['shot']
            lines += ['', f'## {table_title(*current, bmad)}', '', '| ' + ' | '.join(header) + ' |',
                      '|' + ' --- |' * len(header)]
        name = (row['object'] if row['paper_name'] == row['object']
                else f"{row['paper_name']} ({row['object']})")
        cells = [name, row['selection'], str(row['draws'])] + ([row['normalisation']] if both else [])
        for level in LEVELS:
            cells += [auroc_cell(row[f'{level}_auroc_mean'], row[f'{level}_auroc_std'],
                                 row.get(f'{level}_auroc_low'), row.get(f'{level}_auroc_high')),
                      number_cell(row[f'{level}_auroc_paper']), number_cell(row[f'{level}_auroc_rerun']),
                      number_cell(row[f'{level}_auroc_minus_paper'], signed=True)]
            cells += [difference_cell(row, f'{level}_auroc_minus_test')] if both else []
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------- what the runs cost

def table_name(task: Run) -> str:
    return 'zero-shot' if task.setting == 'zero-shot' else f'few-shot k = {task.shot}'


def cost_rows(runs: Sequence[Run], records: Sequence[Dict]) -> List[Dict]:
    """Per table, then in total: its runs' wall time and GPU-hours (the wall time of runs on a CUDA device,
    one GPU each), their devices, the largest peak memory and the mean test throughput, from the results
    files' `cost` (files made before it was recorded count as runs, not as time)."""
    groups: Dict[str, List[Dict]] = {}
    for task, record in zip(runs, records):
        groups.setdefault(table_name(task), []).append(record)
    groups['Total'] = list(records)
    rows = []
    for name, group in groups.items():
        costs = [record['cost'] for record in group if record.get('cost')]
        hours = [cost['wall_time_s'] / 3600 for cost in costs]
        gpu = [cost['wall_time_s'] / 3600 for cost in costs if cost['device'].startswith('cuda')]
        peaks = [cost['peak_memory_bytes'] / 2 ** 30 for cost in costs]
        rates = [cost['test_images_per_s'] for cost in costs if cost.get('test_images_per_s')]
        rows.append({'table': name, 'runs': len(group), 'runs_with_cost': len(costs),
                     'devices': ' / '.join(dict.fromkeys(cost['device'] for cost in costs)) or '–',
                     'wall_hours': sum(hours) if costs else None, 'gpu_hours': sum(gpu) if costs else None,
                     'peak_memory_gib': max(peaks) if peaks else None,
                     'peak_memory_of': ' / '.join(dict.fromkeys(cost['peak_memory_of'] for cost in costs)) or '–',
                     'test_images_per_s': mean_and_std(rates)[0]})
    return rows


def cost_markdown(rows: List[Dict]) -> str:
    lines = ['', '## Cost', '', 'Measured by each run (its results file): wall time from the start of its work to its '
             'results file, GPU-hours = the wall time of the runs on a CUDA device (one GPU each), peak memory of '
             'the device (host RSS on a CPU), test images per second of its final test.', '',
             '| Table | Runs | Devices | Wall time (h) | GPU-hours | Peak memory (GiB) | Test images/s |',
             '|' + ' --- |' * 7]
    for row in rows:
        runs = str(row['runs']) + ('' if row['runs_with_cost'] == row['runs']
                                   else f" ({row['runs_with_cost']} with cost)")
        lines.append(f"| {row['table']} | {runs} | {row['devices']} | {number_cell(row['wall_hours'])} | "
                     f"{number_cell(row['gpu_hours'])} | {number_cell(row['peak_memory_gib'])} "
                     f"({row['peak_memory_of']}) | {number_cell(row['test_images_per_s'])} |")
    return '\n'.join(lines) + '\n'


def write_cost(folder: Path, cost: List[Dict]) -> None:
    atomic_write(folder / 'cost.csv', csv_text(cost, list(cost[0])))


def write_summary(rows: List[Dict], made: Dict[str, str], cost: List[Dict], results_dir: Path) -> str:
    """summary.md opens with how the numbers were made and ends with their cost; summary.csv's rows open with
    how they were made; cost.csv has the cost table. Returns summary.md's text."""
    text = markdown(rows, made) + cost_markdown(cost)
    atomic_write(results_dir / 'summary.md', text)
    write_csv(results_dir / 'summary.csv', made, rows)
    write_cost(results_dir, cost)
    print(f'summary written to {results_dir / "summary.md"}, summary.csv and cost.csv')
    return text
