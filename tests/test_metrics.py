import tracemalloc
from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from mvfa.method.metrics import (
    DEFAULT_CHUNK_SIZE,
    aupro,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    pixel_metrics,
)


def _tied_data(seed: int, n: int, pos_rate: float, dtype=np.float64):
    """Binary labels and heavily tied scores (rounded to one decimal) that favour positives."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < pos_rate
    scores = np.round(rng.random(n) + 0.3 * labels, 1).astype(dtype)
    return labels, scores


def _sklearn_f1_max(labels, scores) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


# --- AUROC -------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_rate", [0.02, 0.5, 0.97])
@pytest.mark.parametrize("chunk_size", [7, 1000, 1 << 24])
def test_auroc_matches_sklearn_with_ties(pos_rate, chunk_size):
    labels, scores = _tied_data(0, 5000, pos_rate)
    assert auroc(labels, scores, chunk_size) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-9
    )


def test_auroc_float32_scores_are_used_as_is():
    # Distinct float32 values that would collapse if rounded further, and equal ones that must tie.
    rng = np.random.default_rng(1)
    labels = rng.random(20_000) < 0.1
    scores = (rng.random(20_000) * 1e-3 + 0.5).astype(np.float32)
    scores[::3] = np.float32(0.5002)
    assert auroc(labels, scores, chunk_size=999) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-9
    )


@pytest.mark.parametrize("label_dtype", [bool, np.int64, np.float32])
def test_auroc_label_dtypes_and_shapes(label_dtype):
    labels, scores = _tied_data(2, 4 * 30 * 30, 0.05, np.float32)
    expected = roc_auc_score(labels, scores)
    got = auroc(labels.astype(label_dtype).reshape(4, 30, 30), scores.reshape(4, 30, 30), 500)
    assert got == pytest.approx(expected, abs=1e-9)


def test_auroc_hand_made():
    # Pairs (pos, neg): 0.9>0.1, 0.9>0.5, 0.5=0.5 (1/2), 0.5>0.1 -> 3.5 / 4.
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.9, 0.5, 0.5, 0.1])) == 0.875


@pytest.mark.parametrize("labels", [np.zeros(10), np.ones(10)])
def test_auroc_raises_on_one_class(labels):
    with pytest.raises(ValueError, match="both classes"):
        auroc(labels, np.arange(10.0))


def test_nan_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0, 1, 0]), np.array([0.1, 0.2, np.nan]))


def _auroc_peak_memory(n: int, chunk_size: int) -> tuple[float, int, int, int]:
    """AUROC of n pixels, 2 % positive, and the peak memory it traced; also the positives' score
    bytes and all scores' bytes."""
    rng = np.random.default_rng(3)
    scores = rng.random(n, dtype=np.float32)
    labels = rng.random(n, dtype=np.float32) < 0.02
    scores[labels] += np.float32(0.5)
    tracemalloc.start()
    try:
        value = auroc(labels, scores, chunk_size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return value, peak, int(labels.sum()) * scores.itemsize, scores.nbytes


def test_auroc_memory_stays_chunk_sized():
    chunk_size = 1 << 20
    _, peak, pos_bytes, all_bytes = _auroc_peak_memory(20_000_000, chunk_size)
    # Per distinct positive score: the float32 value plus int64 counters (~12x its bytes);
    # per chunk: a bool mask and a float32 copy of the selected scores.
    assert peak < 16 * pos_bytes + 8 * chunk_size
    assert peak < all_bytes / 2  # never a whole-array copy


def test_auroc_memory_at_brainmri_size():
    """BrainMRI's pixel scores (3715 maps of 240 x 240, 2 % positive) take under 1 GiB: the bound
    that holds here, on a fifth of the pixels (three chunks of the default size), stays under it at
    BrainMRI's size (measured there directly, the test would take ~1 min and 1.1 GB)."""
    n, brainmri = 40_000_000, 3715 * 240 * 240
    value, peak, pos_bytes, _ = _auroc_peak_memory(n, DEFAULT_CHUNK_SIZE)
    assert 0.5 < value < 1
    assert peak < 16 * pos_bytes + 8 * DEFAULT_CHUNK_SIZE
    assert 16 * pos_bytes * brainmri / n + 8 * DEFAULT_CHUNK_SIZE < 1 << 30


# --- AP and F1-max ----------------------------------------------------------------------


@pytest.mark.parametrize("pos_rate", [0.02, 0.5, 0.97])
def test_average_precision_and_f1_match_sklearn(pos_rate):
    labels, scores = _tied_data(5, 5000, pos_rate, np.float32)
    assert average_precision(labels, scores, 333) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-9
    )
    assert f1_max(labels, scores, 333) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-9)


def test_continuous_scores_match_sklearn():
    rng = np.random.default_rng(6)
    labels = rng.random(3000) < 0.2
    scores = rng.normal(size=3000) + labels
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-9
    )
    assert f1_max(labels, scores) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-9)


def test_f1_max_hand_made():
    # Thresholds 0.9, 0.8, 0.7, 0.1 give F1 = 2/3, 1/2, 4/5, 2/3.
    assert f1_max(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(0.8)


def test_ap_and_f1_raise_without_positives():
    with pytest.raises(ValueError, match="no positive"):
        average_precision(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="no positive"):
        f1_max(np.zeros(4), np.arange(4.0))


# --- AUPRO ------------------------------------------------------------------------------


def _reference_aupro(masks, maps, fpr_limit):
    """Brute-force MVTec AD compute_pro + trapezoid: every distinct score is a threshold."""
    regions = []
    for mask, amap in zip(masks, maps):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == i] for i in range(1, n + 1)]
    normal = maps[masks == 0]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    x, y = np.array(fprs), np.array(pros)
    correction = 0.0
    if fpr_limit not in x:
        i = bisect(x, fpr_limit)
        y_interp = y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_interp + y[i - 1]) * (fpr_limit - x[i - 1])
    keep = x <= fpr_limit
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / fpr_limit


def _two_images():
    """Region A (2 px, scores 0.9 and 0.5) in image 0, region B (2 px, both 0.7) in image 1.

    Normal pixels (10): one at 0.8, one at 0.6, eight at 0.0. The curve's vertices are
    (0,0) (0,.25) (.1,.25) (.1,.75) (.2,.75) (.2,1) (1,1).
    """
    masks = np.zeros((2, 1, 7), dtype=np.uint8)
    maps = np.zeros((2, 1, 7), dtype=np.float32)
    masks[0, 0, :2] = 1
    maps[0, 0, :2] = [0.9, 0.5]
    maps[0, 0, 2] = 0.8
    masks[1, 0, 5:] = 1
    maps[1, 0, 5:] = 0.7
    maps[1, 0, 0] = 0.6
    return masks, maps


@pytest.mark.parametrize(
    "fpr_limit, expected",
    [
        (0.3, (0.1 * 0.25 + 0.1 * 0.75 + 0.1 * 1.0) / 0.3),
        (0.15, (0.1 * 0.25 + 0.05 * 0.75) / 0.15),
        (1.0, 0.1 * 0.25 + 0.1 * 0.75 + 0.8 * 1.0),
    ],
)
def test_aupro_hand_made_value(fpr_limit, expected):
    masks, maps = _two_images()
    assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_perfect_map_is_one():
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, 2:5, 2:5] = True
    masks[2, 6:, :3] = True
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)


def test_aupro_one_of_two_regions_detected():
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 4:, 4:] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 0, 0] = 1.0
    maps[0, 4:, 4:] = -1.0  # below every normal pixel: only found at FPR = 1
    assert aupro(masks, maps) == pytest.approx(0.5)
    # Missed region tied with the normal pixels: PRO rises linearly from 0.5 to 1 over FPR,
    # so the area up to 0.3 is 0.3 * (0.5 + 0.65) / 2.
    maps[0, 4:, 4:] = 0.0
    assert aupro(masks, maps) == pytest.approx((0.5 + 0.65) / 2)


def test_aupro_regions_are_8_connected():
    # Diagonal pixels form one 2-pixel region; with 4-connectivity PRO would be 1/3, not 1/4.
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 4, 4] = True
    maps = np.zeros((1, 5, 5))
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = maps[0, 4, 4] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.25)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force_reference(fpr_limit):
    rng = np.random.default_rng(7)
    masks = ndimage.binary_dilation(rng.random((4, 12, 12)) < 0.04, np.ones((1, 2, 2)))
    maps = np.round(rng.random((4, 12, 12)) + 0.4 * masks, 1).astype(np.float32)
    expected = _reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit, chunk_size=300) == pytest.approx(expected, abs=1e-9)


def test_aupro_raises_without_regions_or_bad_limit():
    with pytest.raises(ValueError, match="anomalous region"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    masks, maps = _two_images()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)


# --- Wrappers ---------------------------------------------------------------------------


def test_wrappers_agree_with_individual_metrics():
    rng = np.random.default_rng(8)
    masks = ndimage.binary_dilation(rng.random((3, 16, 16)) < 0.03, np.ones((1, 3, 3)))
    maps = np.round(rng.random((3, 16, 16)) + 0.5 * masks, 2).astype(np.float32)
    pixel = pixel_metrics(masks, maps)
    assert pixel == pytest.approx(
        {
            "auroc": roc_auc_score(masks.ravel(), maps.ravel()),
            "ap": average_precision_score(masks.ravel(), maps.ravel()),
            "f1_max": _sklearn_f1_max(masks.ravel(), maps.ravel()),
            "aupro": _reference_aupro(masks, maps, 0.3),
        },
        abs=1e-9,
    )

    labels, scores = _tied_data(9, 200, 0.7)
    assert image_metrics(labels, scores) == pytest.approx(
        {
            "auroc": roc_auc_score(labels, scores),
            "ap": average_precision_score(labels, scores),
            "f1_max": _sklearn_f1_max(labels, scores),
        },
        abs=1e-9,
    )
