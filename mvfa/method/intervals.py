"""Confidence intervals and paired comparisons of AUROCs: a seeded bootstrap over test images, DeLong.

The bootstrap resamples test images with replacement, within each class (images with and without an
anomaly: every resample then has both classes, and the class sizes are those of the test set, as in
pROC's stratified bootstrap). The interval is the percentile interval of the resampled AUROCs.
Pixel AUROC resamples images too, never pixels: the pixels of one image are not independent.

A resample is a vector of image weights (how often each image is drawn), so a resampled AUROC is a
weighted Mann-Whitney count:

- image AUROC: exact. The scores are sorted once; a resample's class weights are summed per group of
  tied scores and counted against each other.
- pixel AUROC: each image's pixel scores are counted once into `bins` fixed bins over the global
  score range, per class (a (images, bins) matrix per class); a resample's counts are one matrix
  product of its weights with them. Pairs of a normal and an anomalous pixel in different bins are
  ordered exactly; pairs in the same bin count 1/2 (exact for tied scores), so the resampled AUROC is
  off by at most half the fraction of pairs that share a bin, `bin_error_bound`, which is computed and
  recorded. The point estimate is always the exact AUROC (mvfa.method.metrics).

The weights are drawn from a generator seeded by (seed, stream): two results files of the same test
images with the same seed and stream get the same resamples, so their replicates are paired.
Pure numpy (and scipy's normal distribution and ranks); no torch.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats


CONFIDENCE = 0.95
DEFAULT_BINS = 2048
# Images per block when pixel scores are binned: bounds the temporary memory (about 10 bytes per pixel of
# a block: 9 MB for 16 images of 240 x 240).
IMAGES_PER_BLOCK = 16


def generator(seed: int, stream: str) -> np.random.Generator:
    """The bootstrap's generator for one test set: `stream` (e.g. the object) keeps different test sets'
    resamples independent while the same test set always gets the same ones."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode('utf-8'))])


def stratified_weights(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) float32 counts: how often each item is drawn when each class (label != 0 or not)
    is resampled with replacement to its own size."""
    labels = np.asarray(labels).reshape(-1) != 0
    weights = np.zeros((resamples, labels.size), dtype=np.float32)
    rows = np.arange(resamples)[:, None]
    for members in (np.flatnonzero(~labels), np.flatnonzero(labels)):
        if members.size == 0:
            continue
        drawn = rng.integers(0, members.size, size=(resamples, members.size))
        counts = np.bincount((rows * members.size + drawn).ravel(), minlength=resamples * members.size)
        weights[:, members] = counts.reshape(resamples, members.size)
    return weights


def grouped_auroc(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUROC per row from (R, G) weights of the positives and negatives in G ordered groups (increasing
    score), pairs within a group counting 1/2."""
    negative_below = np.cumsum(negative, axis=1, dtype=np.float64) - negative
    pairs = np.sum(positive * (negative_below + 0.5 * negative), axis=1, dtype=np.float64)
    return pairs / (positive.sum(axis=1, dtype=np.float64) * negative.sum(axis=1, dtype=np.float64))


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Exact AUROC under each row of (R, n) item weights (ties count 1/2): one sort for all rows."""
    labels, scores = np.asarray(labels).reshape(-1) != 0, np.asarray(scores).reshape(-1)
    order = np.argsort(scores, kind='stable')
    sorted_scores = scores[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1))
    sorted_weights = weights[:, order]
    positive = np.add.reduceat(np.where(labels[order], sorted_weights, 0), starts, axis=1)
    negative = np.add.reduceat(np.where(labels[order], 0, sorted_weights), starts, axis=1)
    return grouped_auroc(positive, negative)


@dataclass(frozen=True)
class PixelHistograms:
    """Per image, its pixel scores counted into `bins` equal bins over [low, high], per class."""
    normal: np.ndarray  # (images, bins) float32
    anomalous: np.ndarray  # (images, bins) float32
    low: float
    high: float

    @classmethod
    def of(cls, masks: np.ndarray, maps: np.ndarray, bins: int = DEFAULT_BINS) -> 'PixelHistograms':
        """Histograms of (N, H, W) maps split by (N, H, W) masks, in blocks of images (bounded memory)."""
        n = len(maps)
        low, high = float(np.min(maps)), float(np.max(maps))
        scale = bins / (high - low) if high > low else 0.0
        counts = np.zeros((n, 2 * bins), dtype=np.float32)
        for start in range(0, n, IMAGES_PER_BLOCK):
            block = slice(start, min(start + IMAGES_PER_BLOCK, n))
            scores = maps[block].reshape(block.stop - start, -1)
            index = np.minimum(((scores - low) * scale).astype(np.int32), bins - 1)
            index += (np.asarray(masks[block]).reshape(index.shape) != 0) * bins
            index += np.arange(block.stop - start)[:, None] * (2 * bins)
            counts[block] = np.bincount(index.ravel(), minlength=(block.stop - start) * 2 * bins).reshape(-1, 2 * bins)
        return cls(counts[:, :bins], counts[:, bins:], low, high)

    @property
    def image_labels(self) -> np.ndarray:
        """Whether each image has an anomalous pixel: the classes the bootstrap resamples within."""
        return self.anomalous.sum(axis=1) > 0

    def resampled(self, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(AUROC per resample, its bound on the binning error) for (R, images) weights."""
        positive, negative = weights @ self.anomalous, weights @ self.normal
        shared = np.sum(positive.astype(np.float64) * negative, axis=1)
        bound = 0.5 * shared / (positive.sum(axis=1, dtype=np.float64) * negative.sum(axis=1, dtype=np.float64))
        return grouped_auroc(positive, negative), bound


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval of an AUROC, with the replicates it came from."""
    low: float
    high: float
    replicates: np.ndarray
    # Pixel AUROC: the most any replicate can be off from the exact resampled AUROC (binning).
    bin_error_bound: Optional[float] = None

    def record(self) -> Dict:
        record = {'low': self.low, 'high': self.high, 'replicates': self.replicates.tolist()}
        if self.bin_error_bound is not None:
            record['bin_error_bound'] = self.bin_error_bound
        return record


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> Tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def image_auroc_interval(labels: np.ndarray, scores: np.ndarray, resamples: int, rng: np.random.Generator,
                         confidence: float = CONFIDENCE) -> Interval:
    replicates = weighted_auroc(labels, scores, stratified_weights(labels, resamples, rng))
    return Interval(*percentile_interval(replicates, confidence), replicates)


def pixel_auroc_interval(masks: np.ndarray, maps: np.ndarray, resamples: int, rng: np.random.Generator,
                         bins: int = DEFAULT_BINS, confidence: float = CONFIDENCE) -> Interval:
    histograms = PixelHistograms.of(masks, maps, bins)
    replicates, bound = histograms.resampled(stratified_weights(histograms.image_labels, resamples, rng))
    return Interval(*percentile_interval(replicates, confidence), replicates, float(bound.max()))


@dataclass(frozen=True)
class Difference:
    """An AUROC difference (a - b) with its interval and two-sided p-value (null: no difference)."""
    estimate: float
    low: float
    high: float
    p_value: float
    method: str

    def text(self, scale: float = 100.0) -> str:
        return (f'{scale * self.estimate:+.2f} [{scale * self.low:+.2f}, {scale * self.high:+.2f}], '
                f'p = {self.p_value:.3g}')


def paired_bootstrap(estimate_a: float, estimate_b: float, replicates_a: Sequence[float],
                     replicates_b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """The difference of two AUROCs from their replicates under the same resamples (paired).

    p-value: the bootstrap distribution shifted to the null (centred on 0), two-sided, with the
    observed difference counted as one resample ((1 + hits) / (1 + R)), so it is never 0.
    """
    estimate = estimate_a - estimate_b
    differences = np.asarray(replicates_a, dtype=np.float64) - np.asarray(replicates_b, dtype=np.float64)
    low, high = percentile_interval(differences, confidence)
    extreme = np.count_nonzero(np.abs(differences - estimate) >= abs(estimate) - 1e-12)
    return Difference(estimate, low, high, float((1 + extreme) / (1 + differences.size)), 'paired bootstrap')


def paired_image_bootstrap(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, resamples: int,
                           rng: np.random.Generator, confidence: float = CONFIDENCE) -> Difference:
    """Paired bootstrap of the image AUROC difference of two score vectors of the same images."""
    weights = stratified_weights(labels, resamples, rng)
    full = np.ones((1, np.size(labels)), dtype=np.float32)
    estimates = [float(weighted_auroc(labels, s, full)[0]) for s in (scores_a, scores_b)]
    return paired_bootstrap(*estimates, weighted_auroc(labels, scores_a, weights),
                            weighted_auroc(labels, scores_b, weights), confidence)


def _placements(positive: np.ndarray, negative: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by midranks (Sun and Xu 2014), O(n log n): per positive the
    fraction of negatives below it (ties 1/2), per negative the fraction of positives above it."""
    m, n = positive.size, negative.size
    pooled = stats.rankdata(np.concatenate([positive, negative]))
    positive_part = (pooled[:m] - stats.rankdata(positive)) / n
    negative_part = 1.0 - (pooled[m:] - stats.rankdata(negative)) / m
    return positive_part, negative_part


def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
           confidence: float = CONFIDENCE) -> Difference:
    """DeLong's test of two correlated image AUROCs (the same images scored twice), fast version."""
    labels = np.asarray(labels).reshape(-1) != 0
    if labels.all() or not labels.any():
        raise ValueError('DeLong needs both classes')
    components = [_placements(np.asarray(s, dtype=np.float64)[labels], np.asarray(s, dtype=np.float64)[~labels])
                  for s in (scores_a, scores_b)]
    aurocs = [float(p.mean()) for p, _ in components]
    positive = np.stack([p for p, _ in components])
    negative = np.stack([q for _, q in components])
    covariance = np.cov(positive) / positive.shape[1] + np.cov(negative) / negative.shape[1]
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    estimate = aurocs[0] - aurocs[1]
    if variance <= 0:  # identical rankings: no difference and no spread
        return Difference(estimate, estimate, estimate, 1.0 if estimate == 0 else 0.0, 'DeLong')
    spread = np.sqrt(variance)
    z = stats.norm.ppf(0.5 + confidence / 2)
    return Difference(estimate, float(estimate - z * spread), float(estimate + z * spread),
                      float(2 * stats.norm.sf(abs(estimate) / spread)), 'DeLong')


def mean_replicates(replicate_lists: List[Sequence[float]]) -> np.ndarray:
    """Replicates of a mean of AUROCs (over draws scored on the same resamples, or over objects)."""
    return np.mean(np.asarray(replicate_lists, dtype=np.float64), axis=0)
