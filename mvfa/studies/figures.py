"""The figure studies of `reproduce.py --study`: what they compute from a trained few-shot run.

- `tsne` (the paper's Figure 6): an image feature of every test image before adaptation (the frozen
  CLIP) and after (the det adapters), embedded in 2-D by t-SNE.
- `level_maps` (Figure 4): each level's anomaly map beside the fused one, scored by
  `evaluate(..., keep_level_maps=True)`: the one scoring path (`scoring.score_batch`).

The image feature, before and after alike: at each adapted block, every patch token mapped into
CLIP's joint image-text space and L2-normalised, averaged over the patches and then over the levels.
After adaptation the map is the det adapter (the tokens the image score compares with the text);
before, it is CLIP's own (`ln_post` and the projection, which CLIP applies to its final class token),
on the frozen stream with no adapter acting. Only the adapters differ between the two panels.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from CLIP.adapter import LevelTokens, MultiLevelAdaptedCLIP
from dataset.readers import load_image
from dataset.medical_few import MedDataset
from mvfa.studies import plots
from mvfa.engine.evaluation import evaluate
from mvfa.method.memory_bank import MemoryBank, build_memory_bank
from mvfa.method.metrics import auroc
from mvfa.common.outputs import atomic_write
from mvfa.method.scoring import patch_tokens
from mvfa.engine.session import Session
from utils import augment

PANEL_IMAGES = 4  # abnormal test images per object in the level-map panel: the first ones, in test order
INFERENCE_BATCH = 16  # images per batch when the run's flags name no evaluation batch size


@dataclass
class TrainedRun:
    """A few-shot run's adapters, test set, text features and memory bank, rebuilt from its results record."""
    obj: str
    seed: int
    model: MultiLevelAdaptedCLIP
    data: MedDataset
    text_features: Tensor
    bank: MemoryBank
    loader: DataLoader


def load_run(record: Dict) -> TrainedRun:
    """As test_few.py sets a run up, from the flags the run recorded: the same seed, support images and
    checkpoint (the one tested, or the one training saved)."""
    args = argparse.Namespace(**record['flags'])
    checkpoint = Path(record['checkpoint'] or Path(args.save_path) / f'{args.obj}.pth')
    session = Session(args)
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate, args.fewshot_seed_dir)
    model = session.load_model(checkpoint)
    batch_size = getattr(args, 'eval_batch_size', None) or INFERENCE_BATCH
    normal, _ = augment(data.fewshot_norm_img)
    return TrainedRun(args.obj, args.seed, model, data, session.text_features(args.obj),
                      build_memory_bank(model, normal, batch_size), DataLoader(data, batch_size=batch_size))


# ---------------------------------------------------------------- t-SNE

def frozen_level_streams(model: MultiLevelAdaptedCLIP, images: Tensor) -> List[Tensor]:
    """The frozen CLIP's stream after each adapted block, no adapter acting: before adaptation."""
    stream, start, streams = model.input_stream(images), 0, []
    for end in model.features:
        stream = model.run_blocks(stream, start, end)
        streams.append(stream)
        start = end
    return streams


def joint_space(model: MultiLevelAdaptedCLIP, stream: Tensor) -> Tensor:
    """CLIP's own map of stream tokens into its image-text space: what `pooled_embedding` applies to the
    final class token, here to every token."""
    tokens = model.image_encoder.ln_post(stream)
    return tokens if model.image_encoder.proj is None else tokens @ model.image_encoder.proj


def image_feature(levels: LevelTokens) -> Tensor:
    """(B, C): the L2-normalised patch tokens averaged over the patches, then over the levels."""
    return torch.stack([F.normalize(patch_tokens(t).float(), dim=-1).mean(dim=1) for t in levels]).mean(dim=0)


@torch.inference_mode()
def image_features(model: MultiLevelAdaptedCLIP, loader: DataLoader) -> Tuple[np.ndarray, np.ndarray]:
    """(N, C) image features of a test set before and after adaptation."""
    before, after = [], []
    for images, _, _ in loader:
        images = images.to(model.device)
        with model.autocast():
            _, det = model.adapter_tokens(images)
            frozen = [joint_space(model, stream) for stream in frozen_level_streams(model, images)]
        before.append(image_feature(frozen))
        after.append(image_feature(det))
    return torch.cat(before).cpu().numpy(), torch.cat(after).cpu().numpy()


def tsne_embedding(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, 2) t-SNE of the features, the same for the same seed (PCA initialisation)."""
    from sklearn.manifold import TSNE
    # sklearn needs a perplexity below the number of points; 30 is its default.
    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(features)


def separation(features: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score of normal vs abnormal (cosine), in the feature space itself: 1 apart, 0 mixed."""
    from sklearn.metrics import silhouette_score
    return float(silhouette_score(features, labels, metric='cosine'))


def tsne(records: List[Dict], out: Path) -> Tuple[List[Dict], str]:
    """Panels `tsne.png` (per object: before | after) and `embedding.csv` (every test image's 2-D points)."""
    rows, panels, points = [], [], []
    for record in records:
        run = load_run(record)
        labels = np.asarray(run.data.labels)
        before, after = image_features(run.model, run.loader)
        embedded = {'before': tsne_embedding(before, run.seed), 'after': tsne_embedding(after, run.seed)}
        panels.append((run.obj, embedded['before'], embedded['after'], labels))
        points += [{'object': run.obj, 'image': str(path), 'label': int(label),
                    **{f'{stage}_{axis}': float(embedded[stage][i, a]) for stage in embedded
                       for a, axis in enumerate('xy')}}
                   for i, (path, label) in enumerate(zip(run.data.images, labels))]
        rows.append({'object': run.obj, 'images': len(labels), 'abnormal': int(labels.sum()),
                     'separation_before': separation(before, labels), 'separation_after': separation(after, labels)})
    plots.tsne_panels(out / 'tsne.png', panels)
    atomic_write(out / 'embedding.csv', pandas.DataFrame(points).to_csv(index=False))
    notes = ('Image feature: at each adapted block the patch tokens in the joint image-text space, L2-normalised, '
             'averaged over patches and levels; before: CLIP\'s own projection of the frozen stream, after: the '
             'det adapters (see mvfa/studies/figures.py). Separation: silhouette score (cosine) of normal vs abnormal in '
             'that feature space (1: apart, 0: mixed). Figure: tsne.png; every point: embedding.csv.')
    return rows, notes


# ---------------------------------------------------------------- per-level maps

def level_maps(records: List[Dict], out: Path) -> Tuple[List[Dict], str]:
    """Panel `level_maps.png`: per object its first abnormal test images, each level's map and the fused one;
    the table gives each map's pixel AUROC over the whole test set."""
    rows, panel_rows, names = [], [], []
    for record in records:
        run = load_run(record)
        evaluation = evaluate(run.model, run.loader, run.text_features, run.data.has_masks, run.bank,
                              progress=False, keep_level_maps=True)
        names = [f'block {level}' for level in run.model.features]
        row: Dict[str, Optional[float] | str] = {'object': run.obj}
        for index, name in enumerate(names):
            row[f'{name} pixel AUROC'] = (None if evaluation.masks is None else
                                          100.0 * auroc(evaluation.masks.ravel(),
                                                        evaluation.level_maps[:, index].ravel()))
        row['fused pixel AUROC'] = None if evaluation.pixel_auroc is None else 100.0 * evaluation.pixel_auroc
        rows.append(row)
        for index in np.flatnonzero(evaluation.labels == 1)[:PANEL_IMAGES]:
            image = load_image(run.data.images[index], run.model.img_size).permute(1, 2, 0).numpy()
            mask = None if evaluation.masks is None else evaluation.masks[index]
            panel_rows.append((f'{run.obj} {run.data.images[index].name}', image, mask,
                               evaluation.level_maps[index], evaluation.maps[index]))
    plots.level_map_panel(out / 'level_maps.png', panel_rows, names)
    notes = ("Each level's map and the fused map are normalised over the test set as the method normalises its "
             'fused map (zero-shot and memory-bank parts min-max scaled and weighted 0.5 / 0.5), from the same '
             'scoring code (mvfa/method/scoring.py `score_batch`); the fused map is the method\'s, of the levels summed. '
             'Pixel AUROC (%) '
             'of each map over the whole test set; – for objects without masks. Figure: level_maps.png, the '
             f'first {PANEL_IMAGES} abnormal test images of each object.')
    return rows, notes
