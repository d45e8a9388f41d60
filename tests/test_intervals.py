"""mvfa/method/intervals.py on hand-made cases and seeded simulations: exact resampled AUROCs, the pixel
binning and its stated error, coverage of the intervals, paired tests and DeLong; compare.py."""
from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
from scipy import stats

import compare
from mvfa.method import intervals
from mvfa.studies import comparison
from mvfa.runs.cli import run
from mvfa.method.metrics import auroc

SIMULATIONS = 200
# Binormal population: normal ~ N(0, 1), anomalous ~ N(d, 1), so AUROC = Phi(d / sqrt(2)) (0.80 here).
SEPARATION = 1.19
TRUE_AUROC = float(stats.norm.cdf(SEPARATION / np.sqrt(2)))
PER_CLASS = 50
LABELS = np.r_[np.zeros(PER_CLASS), np.ones(PER_CLASS)]


def binormal(rng: np.random.Generator, separation: float = SEPARATION) -> np.ndarray:
    return rng.normal(size=LABELS.size) + separation * LABELS


def test_resampled_auroc_is_the_exact_auroc_of_the_resampled_set():
    """Catches: ties not counted 1/2, or a weight applied to the wrong item after the sort."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)  # many ties
    weights = intervals.stratified_weights(labels, 5, rng)
    resampled = intervals.weighted_auroc(labels, scores, weights)
    for row, value in zip(weights.astype(int), resampled):
        drawn = np.repeat(np.arange(60), row)
        assert value == pytest.approx(auroc(labels[drawn], scores[drawn]), abs=1e-12)
    assert intervals.weighted_auroc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.9], np.ones((1, 4)))[0] == 0.875


def test_weights_resample_each_class_to_its_size_and_repeat_under_the_seed():
    labels = np.array([0, 0, 0, 1, 1])
    weights = intervals.stratified_weights(labels, 100, intervals.generator(3, 'Brain'))
    assert np.all(weights[:, :3].sum(axis=1) == 3) and np.all(weights[:, 3:].sum(axis=1) == 2)
    again = intervals.stratified_weights(labels, 100, intervals.generator(3, 'Brain'))
    other = intervals.stratified_weights(labels, 100, intervals.generator(3, 'Liver'))
    assert np.array_equal(weights, again) and not np.array_equal(weights, other)


def lesion_maps(rng: np.random.Generator, n: int = 60, side: int = 32) -> tuple:
    """Realistic pixel scores: smooth noise, and discs of raised scores where the masks are."""
    masks = np.zeros((n, side, side), dtype=bool)
    yy, xx = np.mgrid[:side, :side]
    for i in range(0, n, 2):
        cy, cx, r = rng.integers(8, side - 8, size=2).tolist() + [int(rng.integers(2, 7))]
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    maps = rng.gamma(2.0, 1.0, size=masks.shape).astype(np.float32) + 1.5 * masks
    return masks, maps


def test_binned_pixel_auroc_is_within_its_stated_bound_of_the_exact_one():
    """Catches: a bin off by one, counts of a resample not weighted by image, or a bound too small."""
    rng = np.random.default_rng(2)
    masks, maps = lesion_maps(rng)
    histograms = intervals.PixelHistograms.of(masks, maps, bins=256)
    weights = intervals.stratified_weights(histograms.image_labels, 20, rng)
    binned, bound = histograms.resampled(weights)
    pixel_weights = np.repeat(weights, masks[0].size, axis=1)
    exact = intervals.weighted_auroc(masks, maps, pixel_weights)
    assert np.all(np.abs(binned - exact) <= bound + 1e-12)
    # The bound is the worst case (every shared-bin pair misordered); the error is far smaller.
    assert 0 < np.max(np.abs(binned - exact)) < bound.max() / 10 and bound.max() < 5e-3
    # Unit weights: the whole test set, its exact AUROC within the bound.
    full, full_bound = histograms.resampled(np.ones((1, len(maps)), dtype=np.float32))
    assert abs(full[0] - auroc(masks, maps)) <= full_bound[0]
    # At the default 2048 bins the bound is far below the interval's width.
    interval = intervals.pixel_auroc_interval(masks, maps, 200, rng)
    assert interval.bin_error_bound < min(1e-3, (interval.high - interval.low) / 10)


def pixel_interval_cost(rng: np.random.Generator, images: int) -> tuple:
    """(seconds, peak traced bytes, interval) of 1000 resamples of `images` 240 x 240 maps."""
    maps = rng.random((images, 240, 240), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[::3, 100:140, 90:150] = True
    maps[masks] += 0.4
    tracemalloc.start()
    started = time.perf_counter()
    interval = intervals.pixel_auroc_interval(masks, maps, 1000, rng)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, interval


def test_pixel_interval_of_brainmri_sized_images_is_fast_and_memory_bounded():
    """1000 resamples of 100 and 200 images of 240 x 240 (BrainMRI's image size; 6 M and 12 M pixels): the
    memory grows by the per-image histograms (16 KB an image), not by the pixels (a copy of the extra 100
    images' scores alone is 23 MB); the rest is bounded by resamples x bins. At BrainMRI's full size (3,715
    images) this took 4.3 s and 127 MiB on one loaded core (README "Confidence intervals")."""
    rng = np.random.default_rng(10)
    small, large = pixel_interval_cost(rng, 100), pixel_interval_cost(rng, 200)
    assert large[1] - small[1] < 6 * 2 ** 20 and large[1] < 100 * 2 ** 20
    assert large[0] < 10 and 0.5 < large[2].low < large[2].high < 1


def test_scores_on_bin_values_are_binned_exactly():
    """Scores taking a few values, each in its own bin: the binned AUROC is the exact one (ties 1/2)."""
    rng = np.random.default_rng(4)
    masks = rng.random((10, 8, 8)) < 0.3
    maps = (rng.integers(0, 5, size=masks.shape) + masks).astype(np.float32)
    histograms = intervals.PixelHistograms.of(masks, maps, bins=6)
    value, _ = histograms.resampled(np.ones((1, 10), dtype=np.float32))
    assert value[0] == pytest.approx(auroc(masks, maps), abs=1e-12)


def test_interval_covers_the_known_auroc_of_a_binormal_population_95_percent_of_the_time():
    """600 seeded test sets of 50 + 50 images: the coverage has a binomial standard error of 0.9 points,
    and the percentile bootstrap undercovers by about a point at this size; [0.92, 0.975] is nominal minus
    3.4 standard errors to nominal plus 2.8. Catches: resampling one class only, or a 90 % interval
    (coverage about 0.89, 3 standard errors below the bound)."""
    rng = np.random.default_rng(0)
    covered = [interval.low <= TRUE_AUROC <= interval.high
               for interval in (intervals.image_auroc_interval(LABELS, binormal(rng), 400, rng)
                                for _ in range(3 * SIMULATIONS))]
    assert 0.92 <= np.mean(covered) <= 0.975


def correlated_pair(rng: np.random.Generator, separation_a: float, separation_b: float) -> tuple:
    """Two scores of the same images that share their image's own variation (paired)."""
    shared = rng.normal(size=LABELS.size)
    return tuple(shared + separation * LABELS + 0.7 * rng.normal(size=LABELS.size)
                 for separation in (separation_a, separation_b))


@pytest.mark.parametrize('test', ['bootstrap', 'delong'])
def test_paired_test_rejects_5_percent_without_a_difference_and_finds_a_planted_one(test):
    """Type-I rate over 200 simulations of two equally good scorers within [0.01, 0.10] (5 % +- 3.3
    binomial standard errors); a planted difference (AUROC 0.86 vs 0.69) found in nearly all."""
    rng = np.random.default_rng(5)

    def p_value(a: np.ndarray, b: np.ndarray) -> float:
        if test == 'delong':
            return intervals.delong(LABELS, a, b).p_value
        return intervals.paired_image_bootstrap(LABELS, a, b, 400, rng).p_value

    null = [p_value(*correlated_pair(rng, SEPARATION, SEPARATION)) for _ in range(SIMULATIONS)]
    assert 0.01 <= np.mean(np.array(null) < 0.05) <= 0.10
    planted = [p_value(*correlated_pair(rng, 1.6, 0.75)) for _ in range(50)]
    assert np.mean(np.array(planted) < 0.05) >= 0.9


def test_delong_hand_computed():
    """Positives (0.9, 0.6) and negatives (0.7, 0.1) under a, (0.8, 0.2) and (0.5, 0.3) under b:
    AUROCs 0.75 and 0.5; placements of the positives a (1, .5), b (1, 0), of the negatives a (.5, 1),
    b (.5, .5); var(a - b) = (0.125 + 0.5 - 2 * 0.25) / 2 + (0.125 + 0 - 0) / 2 = 0.125."""
    result = intervals.delong([1, 1, 0, 0], [0.9, 0.6, 0.7, 0.1], [0.8, 0.2, 0.5, 0.3])
    assert result.estimate == pytest.approx(0.25)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(0.25 / np.sqrt(0.125)))
    assert result.high - result.estimate == pytest.approx(stats.norm.ppf(0.975) * np.sqrt(0.125))
    same = intervals.delong([1, 1, 0, 0], [0.9, 0.6, 0.7, 0.1], [9, 6, 7, 1])
    assert same.estimate == 0 and same.p_value == 1.0


def test_delong_and_paired_bootstrap_agree_on_a_large_test_set():
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(400), np.ones(400)]
    shared = rng.normal(size=800)
    a = shared + 1.2 * labels + 0.7 * rng.normal(size=800)
    b = shared + 1.0 * labels + 0.7 * rng.normal(size=800)
    by_delong = intervals.delong(labels, a, b)
    by_bootstrap = intervals.paired_image_bootstrap(labels, a, b, 2000, rng)
    assert by_bootstrap.estimate == pytest.approx(by_delong.estimate, abs=1e-12)
    assert by_bootstrap.high - by_bootstrap.low == pytest.approx(by_delong.high - by_delong.low, rel=0.1)
    assert by_bootstrap.p_value == pytest.approx(by_delong.p_value, abs=0.02)


def test_paired_bootstrap_of_replicates_is_centred_on_the_difference():
    replicates = np.linspace(-1, 1, 101)
    result = intervals.paired_bootstrap(0.8, 0.7, 0.8 + replicates / 100, 0.7 + replicates / 200)
    assert result.estimate == pytest.approx(0.1)
    assert result.low == pytest.approx(0.1 - 0.95 / 200, abs=1e-4)
    assert intervals.paired_bootstrap(0.5, 0.5, [0.4, 0.6], [0.4, 0.6]).p_value == 1.0


def results_file(path, images, labels, scores, pixel_replicates=None, seed=0) -> None:
    """A results file as the scripts write it, reduced to what a comparison reads."""
    record = {'obj': 'Brain', 'images': images, 'labels': labels.tolist(), 'image_scores': scores.tolist(),
              'image_auroc': auroc(labels, scores), 'pixel_auroc': None, 'bootstrap': None}
    if pixel_replicates is not None:
        record['pixel_auroc'] = float(np.mean(pixel_replicates))
        record['bootstrap'] = {'resamples': len(pixel_replicates), 'seed': seed, 'stream': 'Brain',
                               'pixel_auroc': {'replicates': list(pixel_replicates)}}
    path.write_text(json.dumps(record))


def test_compare_reports_both_paired_tests_for_two_files_of_one_test_set(tmp_path, capsys):
    rng = np.random.default_rng(8)
    a, b = correlated_pair(rng, 1.6, 0.75)
    images = [f'img{i}.png' for i in range(LABELS.size)]
    pixel_a, pixel_b = 0.9 + rng.normal(0, 0.01, 200), 0.85 + rng.normal(0, 0.01, 200)
    results_file(tmp_path / 'a.json', images, LABELS, a, pixel_a)
    results_file(tmp_path / 'b.json', images, LABELS, b, pixel_b)
    text = compare.main([str(tmp_path / 'a.json'), str(tmp_path / 'b.json'), '--bootstrap', '500'])
    by_delong = intervals.delong(LABELS, a, b)
    image_line = next(line for line in text.splitlines() if line.startswith('| image AUROC'))
    assert by_delong.text() in image_line and by_delong.p_value < 0.01
    pixel_line = next(line for line in text.splitlines() if line.startswith('| pixel AUROC'))
    assert intervals.paired_bootstrap(np.mean(pixel_a), np.mean(pixel_b), pixel_a, pixel_b).text() in pixel_line
    # Another test set (other images) is refused in one line, exit status 2.
    results_file(tmp_path / 'other.json', images[::-1], LABELS, b)
    assert run(compare.main, [str(tmp_path / 'a.json'), str(tmp_path / 'other.json')]) == 2
    assert 'do not score the same images' in capsys.readouterr().err
    # Pixel replicates of another seed are not paired: no pixel difference.
    results_file(tmp_path / 'seed.json', images, LABELS, b, pixel_b, seed=1)
    text = compare.main([str(tmp_path / 'a.json'), str(tmp_path / 'seed.json')])
    assert 'pixel AUROC: no paired bootstrap' in text


def bootstrapped(stream: str, auroc_value: float, replicates: np.ndarray, seed: int = 0) -> dict:
    return {'image_auroc': auroc_value, 'images': [stream], 'labels': [1],
            'bootstrap': {'resamples': replicates.size, 'seed': seed, 'stream': stream,
                          'image_auroc': {'replicates': replicates.tolist()}}}


def test_a_table_cells_interval_is_of_the_mean_over_objects_of_the_mean_over_draws():
    """Catches: an Average's interval taken from one object, or draws of different bootstraps pooled."""
    rng = np.random.default_rng(9)
    brain = [bootstrapped('Brain', 0.8, rng.random(100)) for _ in range(2)]
    chest = [bootstrapped('Chest', 0.7, rng.random(100) + 1)]
    expected = (np.mean([r['bootstrap']['image_auroc']['replicates'] for r in brain], axis=0)
                + np.array(chest[0]['bootstrap']['image_auroc']['replicates'])) / 2
    low, high = comparison.percent_interval([brain, chest], 'image')
    assert (low, high) == pytest.approx((100 * np.quantile(expected, 0.025), 100 * np.quantile(expected, 0.975)))
    other_seed = [brain[0], bootstrapped('Brain', 0.8, rng.random(100), seed=1)]
    assert comparison.percent_interval([other_seed], 'image') == (None, None)
    assert comparison.paired_difference([brain], [other_seed], 'image') is None
