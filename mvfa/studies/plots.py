"""The studies' plots, as PNG files: the shot curve, the t-SNE panels and the per-level map panel.

matplotlib is imported inside each function (with the file-only Agg backend), so that importing this
module, and `reproduce.py --help`, stays fast.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mvfa.common.outputs import atomic_write

DPI = 150
CLASS_COLOURS = (('normal', 'tab:blue'), ('abnormal', 'tab:red'))  # label 0, label 1
LEVEL_COLOURS = {'image': 'tab:blue', 'pixel': 'tab:orange'}

# (mean, std or None) per point; None where nothing was measured.
MeanStd = Tuple[Optional[float], Optional[float]]


def pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save(figure, path: Path) -> None:
    """The figure as a PNG, written whole (`atomic_write`)."""
    png = io.BytesIO()
    figure.savefig(png, format='png', dpi=DPI, bbox_inches='tight')
    pyplot().close(figure)
    atomic_write(path, png.getvalue())


def shot_curve(path: Path, shots: Sequence[int], ours: Dict[str, List[MeanStd]],
               paper: Dict[str, List[Optional[float]]]) -> None:
    """`shot_curve_figure` as a PNG file."""
    save(shot_curve_figure(shots, ours, paper), path)


def shot_curve_figure(shots: Sequence[int], ours: Dict[str, List[MeanStd]], paper: Dict[str, List[Optional[float]]]):
    """AUROC (%) against k, image and pixel: our mean over the objects, averaged over the draws, with a band
    of ± 1 sample std of it over the draws (`studies.variant_rows`; no band for one draw), and the paper's
    points. The legend says what the band is."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for level, points in ours.items():
        measured = [(k, mean, std) for k, (mean, std) in zip(shots, points) if mean is not None]
        if not measured:
            continue
        k, mean = (np.array(column, dtype=float) for column in zip(*[(k, mean) for k, mean, _ in measured]))
        axes.plot(k, mean, marker='o', color=LEVEL_COLOURS[level], label=f'{level} AUROC')
        if any(std is not None for _, _, std in measured):
            std = np.array([std or 0.0 for _, _, std in measured])
            axes.fill_between(k, mean - std, mean + std, color=LEVEL_COLOURS[level], alpha=0.2,
                              label=f'{level} band: ± 1 sample std over draws')
        published = [(k, value) for k, value in zip(shots, paper[level]) if value is not None]
        if published:
            axes.scatter(*zip(*published), marker='*', s=120, color=LEVEL_COLOURS[level], edgecolor='black',
                         zorder=3, label=f'{level}, paper')
    axes.set_xscale('log', base=2)
    axes.set_xticks(list(shots), [str(k) for k in shots])
    axes.set_xlabel('shots k (abnormal + normal support images each)')
    axes.set_ylabel('AUROC (%), mean over objects')
    axes.grid(alpha=0.3)
    axes.legend(fontsize='small')
    return figure


def tsne_panels(path: Path, panels: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Per object (title, before (N, 2), after (N, 2), labels (N,)): a row of two scatter plots."""
    plt = pyplot()
    figure, axes = plt.subplots(len(panels), 2, figsize=(8, 4 * len(panels)), squeeze=False)
    for row, (title, before, after, labels) in zip(axes, panels):
        for ax, points, stage in ((row[0], before, 'before adaptation (frozen CLIP)'),
                                  (row[1], after, 'after adaptation (det adapters)')):
            for label, (name, colour) in enumerate(CLASS_COLOURS):
                chosen = labels == label
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colour, label=name, alpha=0.7)
            ax.set_title(f'{title}: {stage}', fontsize='medium')
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].legend(fontsize='small')
    save(figure, path)


def level_map_panel(path: Path, rows: Sequence[Tuple[str, np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray]],
                    level_names: Sequence[str]) -> None:
    """Per image (title, image (S, S, 3) in [0, 1], mask (S, S) or None, level maps (K, S, S), fused map (S, S)):
    a row of the image, its mask, each level's map and the fused map over the image, drawn as every heatmap
    of the project (`visualize.overlay`: JET, 0 blue to 1 red), and a colour bar of that scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from mvfa.engine.visualize import overlay, to_uint8  # torch: only when a panel is drawn
    plt = pyplot()
    columns = ['image', 'mask', *level_names, 'fused']
    figure, axes = plt.subplots(len(rows), len(columns), figsize=(1.8 * len(columns), 1.9 * len(rows)),
                                squeeze=False)
    for ax_row, (title, image, mask, levels, fused) in zip(axes, rows):
        image = to_uint8(image)
        ax_row[0].imshow(image)
        ax_row[0].set_ylabel(title, fontsize='x-small')
        if mask is not None:
            ax_row[1].imshow(mask, cmap='gray', vmin=0, vmax=1)
        for ax, anomaly_map in zip(ax_row[2:], [*levels, fused]):
            ax.imshow(overlay(image, anomaly_map))
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], columns):
        ax.set_title(name, fontsize='small')
    bar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap='jet'), ax=axes, fraction=0.03, pad=0.02)
    bar.set_label('map value, normalised over the test set (each map alone)', fontsize='small')
    save(figure, path)
