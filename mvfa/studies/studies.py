"""The paper's studies beyond its main tables, run by `reproduce.py --study NAME`.

- projectors: Table 4, residual adapters against projectors of the frozen stream (zero-shot);
- levels: Table 5, each single adapted level against all of them (few-shot);
- shots: image and pixel AUROC against k = 2, 4, 8, 16 (few-shot), with a plot;
- tsne: Figure 6, t-SNE of test-set image features before and after adaptation;
- level_maps: Figure 4, each level's anomaly map beside the fused one.

A study is a list of variants, each a set of reproduce.py runs with some flags changed. The runs are
planned, checked and launched as the main tables' are (mvfa/studies/reproduction.py), which hands their
results here. Each study writes
<results_dir>/<study>/summary.md and summary.csv, and a PNG where a plot reads better; each variant
keeps its runs' results under <results_dir>/<study>/<variant>/ and checkpoints under
<ckpt_dir>/<study>/<variant>/. Torch, scikit-learn and matplotlib are imported only by the figure
studies, when they run: importing this module (as reproduce.py does for --help) stays light.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from dataset.layouts import BMAD, detect_layout
from mvfa.common.flags import DATA_PATH
from mvfa.studies.paper_results import PAPER_NAMES, published
from mvfa.studies.plan import Run
from mvfa.studies.tables import LEVELS, mean_and_std, percent, write_csv

SHOT_CURVE = (2, 4, 8, 16)  # the shots the authors ship seed lists for
FIGURE_SHOT = 4  # the few-shot setting of the figures' adapters (the paper's), unless --shots says otherwise
# The figures' objects on BMAD when --obj is 'all': the paper's t-SNE is of RESC; the level maps need pixel
# masks. On MVTec AD and VisA, whose categories all have masks, 'all' is every category.
FIGURE_OBJECTS = {'tsne': ['Retina_RESC'], 'level_maps': ['Brain', 'Liver', 'Retina_RESC']}


@dataclass
class Variant:
    """One row group of a study: its label, the reproduce.py flags of its runs, and whether it is the
    paper's main configuration (so that Tables 1 and 2 give its published numbers)."""
    label: str
    args: argparse.Namespace
    paper_configuration: bool

    @property
    def setting(self) -> str:
        return self.args.settings[0]

    @property
    def shot(self) -> int:
        return 0 if self.setting == 'zero-shot' else self.args.shots[0]


# A variant's runs and their results records, in plan order.
Outcome = Tuple[Variant, Sequence[Run], List[Dict]]


def variant_args(args: argparse.Namespace, folder: str, ckpt_group: Optional[str] = None,
                 **flags) -> argparse.Namespace:
    """reproduce.py's flags with `flags` changed, results in the variant's own folder and checkpoints in
    <ckpt_dir>/<ckpt_group, by default the study>/<folder>; a changed model flag is handed to the scripts
    (reproduce.py passes on only the flags given)."""
    changed = copy.copy(args)
    vars(changed).update(flags)
    changed.results_dir = args.results_dir / args.study / folder
    changed.ckpt_dir = args.ckpt_dir / (ckpt_group or args.study) / folder
    changed.given = set(args.given) | set(flags)
    return changed


def projector_variants(args: argparse.Namespace) -> List[Variant]:
    return [Variant(adaptation, variant_args(args, adaptation, settings=['zero-shot'], adaptation=adaptation),
                    paper_configuration=adaptation == 'adapter') for adaptation in ('adapter', 'projector')]


def level_variants(args: argparse.Namespace) -> List[Variant]:
    """Per k of --shots: each level of --features_list alone, then all of them."""
    variants = []
    for shot in args.shots:
        singles = [([level], f'block {level}', False) for level in args.features_list]
        every = (list(args.features_list), f'all ({" ".join(map(str, args.features_list))})', True)
        for features, label, paper_configuration in singles + [every]:
            folder = f'{shot}shot_blocks_{"_".join(map(str, features))}'
            variants.append(Variant(label, variant_args(args, folder, settings=['few-shot'], shots=[shot],
                                                        features_list=features), paper_configuration))
    return variants


def shot_variants(args: argparse.Namespace) -> List[Variant]:
    shots = args.shots if 'shots' in args.given else list(SHOT_CURVE)
    return [Variant(f'k = {shot}', variant_args(args, f'{shot}shot', settings=['few-shot'], shots=[shot]),
                    paper_configuration=True) for shot in shots]


def figure_variants(args: argparse.Namespace) -> List[Variant]:
    """The adapters a figure shows: few-shot, the first k of --shots (4 by default) and the first draw.
    Both figure studies keep them in <ckpt_dir>/figures/, so that the second can run with --skip_train."""
    on_bmad = isinstance(detect_layout(args.data_path or DATA_PATH), BMAD)
    objects = FIGURE_OBJECTS[args.study] if 'all' in args.obj and on_bmad else args.obj
    shot = args.shots[0] if 'shots' in args.given else FIGURE_SHOT
    draws = {'random_draws': 1} if args.random_draws is not None else {'iterates': args.iterates[:1]}
    return [Variant(f'k = {shot}', variant_args(args, f'{shot}shot', 'figures', settings=['few-shot'],
                                                shots=[shot], obj=objects, **draws), paper_configuration=True)]


# ---------------------------------------------------------------- tables of AUROCs

def paper_auroc(variant: Variant, obj: str, level: str) -> Optional[float]:
    if not variant.paper_configuration:
        return None
    numbers = published(variant.setting, variant.shot, 'paper', obj)
    return None if numbers is None else numbers[LEVELS.index(level)]


def auroc_row(variant: Variant, obj: str, draws: int, per_draw: Dict[str, List[float]],
              paper: Dict[str, Optional[float]]) -> Dict:
    row = {'variant': variant.label, 'setting': variant.setting, 'shot': variant.shot,
           'features_list': ' '.join(map(str, variant.args.features_list)), 'adaptation': variant.args.adaptation,
           'object': obj, 'draws': draws}
    for level in LEVELS:
        row[f'{level}_auroc_mean'], row[f'{level}_auroc_std'] = mean_and_std(per_draw[level])
        row[f'{level}_auroc_paper'] = paper[level]
    return row


def per_object(runs: Sequence[Run], records: List[Dict]) -> Dict[str, List[Dict]]:
    """Each object's records, its draws in plan order."""
    objects = dict.fromkeys(run.obj for run in runs)
    return {obj: [record for run, record in zip(runs, records) if run.obj == obj] for obj in objects}


def scored_groups(groups: Sequence[List[Dict]], level: str) -> List[List[Dict]]:
    return [records for records in groups if records[0].get(f'{level}_auroc') is not None]


def variant_rows(variant: Variant, runs: Sequence[Run], records: List[Dict]) -> List[Dict]:
    """Per object its AUROCs (%) over the draws, then their Average: per draw the mean over the objects
    (pixel: over those with masks, as the paper), then mean ± std over the draws; each with its 95 %
    bootstrap interval over test images (mvfa/studies/comparison.py)."""
    from mvfa.studies import comparison  # numpy and scipy: only when a table is made
    objects = list(dict.fromkeys(run.obj for run in runs))
    draws = list(dict.fromkeys(run.draw for run in runs))
    rows = []
    for obj in objects:
        mine = [record for run, record in zip(runs, records) if run.obj == obj]
        per_draw = {level: [v for v in (percent(r.get(f'{level}_auroc')) for r in mine) if v is not None]
                    for level in LEVELS}
        rows.append(auroc_row(variant, obj, len(mine), per_draw,
                              {level: paper_auroc(variant, obj, level) for level in LEVELS}))
    averages: Dict[str, List[float]] = {level: [] for level in LEVELS}
    for draw in draws:
        for level in LEVELS:
            values = [v for v in (percent(r.get(f'{level}_auroc')) for run, r in zip(runs, records) if run.draw == draw)
                      if v is not None]
            if values:
                averages[level].append(statistics.mean(values))
    paper = {}
    for level in LEVELS:
        scored = [row['object'] for row in rows if row[f'{level}_auroc_mean'] is not None]
        numbers = [paper_auroc(variant, obj, level) for obj in scored]
        paper[level] = statistics.mean(numbers) if numbers and None not in numbers else None
    rows.append(auroc_row(variant, 'Average', len(draws), averages, paper))
    groups = per_object(runs, records)
    for row in rows:
        chosen = list(groups.values()) if row['object'] == 'Average' else [groups[row['object']]]
        for level in LEVELS:
            row[f'{level}_auroc_low'], row[f'{level}_auroc_high'] = comparison.percent_interval(
                scored_groups(chosen, level), level)
    return rows


# The row the other variants of a study are compared with, paired on the same test images.
BASELINES = {'projectors': 'adapter', 'levels': 'all levels'}


def add_paired_differences(study: str, outcomes: List[Outcome], rows: List[Dict]) -> None:
    """Each row's paired difference from the baseline variant's row of the same object and shot (the paper's
    configuration: adapters, all levels); None for the baseline itself and in studies without one."""
    from mvfa.studies import comparison
    baselines = {variant.shot: per_object(runs, records) for variant, runs, records in outcomes
                 if variant.paper_configuration}
    by_label = {(variant.label, variant.shot): (variant, per_object(runs, records))
                for variant, runs, records in outcomes}
    for row in rows:
        variant, groups = by_label[row['variant'], row['shot']]
        baseline = baselines.get(variant.shot)
        for level in LEVELS:
            difference = None
            if study in BASELINES and not variant.paper_configuration and baseline is not None:
                objects = list(groups) if row['object'] == 'Average' else [row['object']]
                ours = scored_groups([groups[obj] for obj in objects], level)
                theirs = scored_groups([baseline[obj] for obj in objects if obj in baseline], level)
                difference = comparison.paired_difference(ours, theirs, level) if ours else None
            row.update(comparison.difference_fields(f'{level}_auroc_minus_baseline', difference))


def cell(mean: Optional[float], std: Optional[float] = None) -> str:
    if mean is None:
        return '–'
    return f'{mean:.2f} ± {std:.2f}' if std is not None else f'{mean:.2f}'


def auroc_table(rows: List[Dict], first_column: Callable[[Dict], str], first_header: str,
                baseline: Optional[str] = None) -> List[str]:
    """AUROC cells 'mean ± std [low, high]'; with a `baseline`, each level's paired difference from it."""
    from mvfa.studies.comparison import auroc_cell, difference_cell
    header = [first_header, 'Draws']
    for level in LEVELS:
        header += [f'{level.capitalize()} AUROC', 'Paper'] + ([f'− {baseline}'] if baseline else [])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for row in rows:
        cells = [first_column(row), str(row['draws'])]
        for level in LEVELS:
            cells += [auroc_cell(row[f'{level}_auroc_mean'], row[f'{level}_auroc_std'],
                                 row.get(f'{level}_auroc_low'), row.get(f'{level}_auroc_high')),
                      cell(row[f'{level}_auroc_paper'])]
            cells += [difference_cell(row, f'{level}_auroc_minus_baseline')] if baseline else []
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


TITLES = {'projectors': 'Adapters vs projectors, zero-shot (paper Table 4)',
          'levels': 'Single levels vs all levels, few-shot (paper Table 5)',
          'shots': 'AUROC against the number of shots k',
          'tsne': 't-SNE of test-set image features before and after adaptation (paper Figure 6)',
          'level_maps': "Each level's anomaly map and the fused map (paper Figure 4)"}
NOTES = {
    'projectors': 'adapter: MVFA, whose adapters feed back into the stream (`--adaptation adapter`); projector: '
                  'projections of the frozen stream that feed nothing back (`--adaptation projector`). Paper: '
                  "the adapter row is MVFA's Table 1; the paper's projector numbers are not transcribed here.",
    'levels': 'block L: adapters at that block alone (`--features_list L`); all: at every block of '
              '--features_list. Paper: all four levels of ViT-L give 88.97 image / 98.67 pixel AUROC '
              '(the averages of its Table 2, which the all row shows over the objects run); the paper reports '
              'the second level (block 12) as the best single one; its single-level numbers are not '
              'transcribed here.',
    'shots': 'Paper: k = 4 is its Table 2; it gives no table for the other k. The authors ship one seed-list '
             'draw per k: `--random_draws N` gives N seeded draws and a spread.'}


def auroc_markdown(study: str, rows: List[Dict], made_with: str) -> str:
    baseline = BASELINES.get(study)
    paired = (f' − {baseline}: the paired difference from the {baseline} row on the same test images '
              '[95 % interval], p (paired bootstrap; README "Confidence intervals").' if baseline else '')
    lines = [f'# MVFA study: {TITLES[study]}', '', made_with, '',
             'AUROC (%). Mean ± sample std over the draws of the support set (no ± for one draw), then '
             '[95 % bootstrap interval over test images] of that mean; Average: '
             'per draw the mean over the objects (pixel: those with masks), then over the draws. '
             + NOTES[study] + paired, '', '## Average over the objects', '']
    lines += auroc_table([row for row in rows if row['object'] == 'Average'], lambda row: row['variant'], 'Variant',
                         baseline)
    lines += ['', '## Per object', '']
    lines += auroc_table([row for row in rows if row['object'] != 'Average'],
                         lambda row: f"{row['variant']}: {PAPER_NAMES.get(row['object'], row['object'])}",
                         'Variant: object', baseline)
    return '\n'.join(lines) + '\n'


def shot_curve(rows: List[Dict], out: Path) -> None:
    from mvfa.studies import plots  # matplotlib: only when a curve is drawn
    averages = [row for row in rows if row['object'] == 'Average']
    plots.shot_curve(out, [row['shot'] for row in averages],
                     {level: [(row[f'{level}_auroc_mean'], row[f'{level}_auroc_std']) for row in averages]
                      for level in LEVELS},
                     {level: [row[f'{level}_auroc_paper'] for row in averages] for level in LEVELS})


# ---------------------------------------------------------------- the studies

@dataclass(frozen=True)
class Study:
    variants: Callable[[argparse.Namespace], List[Variant]]
    # Writes the study's files but summary.md from its runs (and how they were made) into its folder; returns
    # its table rows and summary.md's text, which the cost of the runs then ends.
    write: Callable[[str, List[Outcome], Dict[str, str], str, Path], Tuple[List[Dict], str]]


def write_auroc_study(study: str, outcomes: List[Outcome], made: Dict[str, str], made_with: str,
                      out: Path) -> Tuple[List[Dict], str]:
    rows = [row for variant, runs, records in outcomes for row in variant_rows(variant, runs, records)]
    add_paired_differences(study, outcomes, rows)
    write_csv(out / 'summary.csv', made, rows)
    if study == 'shots':
        shot_curve(rows, out / 'shot_curve.png')
    return rows, auroc_markdown(study, rows, made_with)


def write_figure_study(study: str, outcomes: List[Outcome], made: Dict[str, str], made_with: str,
                       out: Path) -> Tuple[List[Dict], str]:
    from mvfa.studies import figures  # torch, scikit-learn and matplotlib: only when a figure is made
    (_, _, records), = outcomes
    draw = figures.tsne if study == 'tsne' else figures.level_maps
    rows, notes = draw(records, out)
    lines = [f'# MVFA study: {TITLES[study]}', '', made_with, '', notes, '']
    header = list(rows[0])
    lines += ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    lines += ['| ' + ' | '.join(cell(v) if isinstance(v, float) else str(v) for v in row.values()) + ' |'
              for row in rows]
    write_csv(out / 'summary.csv', made, rows)
    return rows, '\n'.join(lines) + '\n'


STUDIES: Dict[str, Study] = {
    'projectors': Study(projector_variants, write_auroc_study),
    'levels': Study(level_variants, write_auroc_study),
    'shots': Study(shot_variants, write_auroc_study),
    'tsne': Study(figure_variants, write_figure_study),
    'level_maps': Study(figure_variants, write_figure_study),
}
STUDY_HELP = ('a study instead of the main tables: projectors (Table 4, zero-shot), levels (Table 5: each of '
              '--features_list alone and all, few-shot, k of --shots), shots (k = 2 4 8 16 unless --shots is '
              'given, with a curve), tsne (Figure 6, of Retina_RESC unless --obj names objects), level_maps '
              '(Figure 4, of Brain, Liver and Retina_RESC unless --obj names objects; on MVTec AD and VisA both '
              "figures show every category); --settings is the study's. "
              'Writes <results_dir>/<study>/summary.md, summary.csv and PNGs; see README "Studies"')
