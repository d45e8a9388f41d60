"""--normalisation reference: each test image's score depends on that image and the normal references
alone, so adding, removing or reordering other test images leaves it as it is; the test rule does not."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import test_few
import test_zero
from CLIP import MultiLevelAdaptedCLIP, create_model
from dataset.synthetic import generate
from mvfa.runs import prediction
from mvfa.engine.evaluation import evaluate
from mvfa.runs.inductive import Inductive

SIZE = 56
LEVELS = [3, 6, 9, 12]


@pytest.fixture(scope='module')
def model() -> MultiLevelAdaptedCLIP:
    torch.manual_seed(0)
    return MultiLevelAdaptedCLIP(create_model('tiny-clip', img_size=SIZE, pretrained=None), LEVELS)


@pytest.fixture(scope='module')
def text() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(96, 2, generator=torch.Generator().manual_seed(1)), dim=0)


@pytest.fixture(scope='module')
def test_set():
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(8, 3, SIZE, SIZE, generator=generator)
    masks = (torch.rand(8, 1, SIZE, SIZE, generator=generator) > 0.8).float()
    masks[:4] = 0
    return images, (masks.flatten(1).amax(1) > 0).long(), masks


@pytest.fixture(scope='module')
def reference(model, text) -> prediction.Reference:
    return prediction.Reference(model, torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)),
                                text, batch_size=4)


def scored(model, text, test_set, order, has_masks, reference=None, inductive=True, batch_size=3):
    images, labels, masks = (part[order] for part in test_set)
    loader = DataLoader(TensorDataset(images, labels, masks), batch_size=batch_size)
    bank = None if reference is None else reference.banks
    normalise = Inductive(len(LEVELS), None if reference is None else reference.calibration) if inductive else None
    return evaluate(model, loader, text, has_masks, bank, progress=False, inductive=normalise)


# The whole set; a subset, reordered; the subset with two new images (copies of others, perturbed) in between.
ORDERS = ([0, 1, 2, 3, 4, 5, 6, 7], [6, 1, 4, 3], [6, 0, 1, 4, 3, 5])


@pytest.mark.parametrize('has_masks', [True, False])
@pytest.mark.parametrize('few_shot', [True, False])
def test_an_images_score_does_not_depend_on_the_other_test_images(model, text, test_set, reference, has_masks,
                                                                   few_shot):
    """Catches: any test-set statistic (min-max over the set) left in the reference rule."""
    bank = reference if few_shot else None
    whole = scored(model, text, test_set, ORDERS[0], has_masks, bank)
    for order in ORDERS[1:]:
        part = scored(model, text, test_set, order, has_masks, bank, batch_size=2)
        np.testing.assert_allclose(part.image_scores, whole.image_scores[order], rtol=1e-5, atol=1e-6)
        if has_masks:
            np.testing.assert_allclose(part.pixel_scores, whole.pixel_scores[order], rtol=1e-5, atol=1e-6)
    # The authors' rule does depend on them: without the top-scoring image the others' scores change.
    test_rule = scored(model, text, test_set, ORDERS[0], has_masks, bank, inductive=False)
    others = [i for i in ORDERS[0] if i != int(np.argmax(test_rule.image_scores))]
    subset = scored(model, text, test_set, others, has_masks, bank, inductive=False)
    assert np.max(np.abs(subset.image_scores - test_rule.image_scores[others])) > 1e-3


def test_reference_scores_are_predicts_calibrated_scores(model, text, test_set, reference):
    """The few-shot reference rule is predict.py --reference's: the same banks, spreads and fusion."""
    evaluation = scored(model, text, test_set, ORDERS[0], False, reference)
    parts = prediction.score_parts(model, test_set[0], text, reference.banks)
    fused, _, _ = reference.calibration.score(parts)
    np.testing.assert_allclose(evaluation.image_scores, fused.numpy(), rtol=1e-5, atol=1e-6)


def test_zero_shot_reference_scores_are_the_raw_ones_with_the_same_auroc(model, text, test_set):
    raw = scored(model, text, test_set, ORDERS[0], True)
    authors = scored(model, text, test_set, ORDERS[0], True, inductive=False)
    parts = prediction.score_parts(model, test_set[0], text, None)
    np.testing.assert_allclose(raw.image_scores, parts.zero.numpy(), rtol=1e-5, atol=1e-6)
    # min-max is increasing: the AUROCs are the same.
    assert raw.image_auroc == pytest.approx(authors.image_auroc) and raw.pixel_auroc == pytest.approx(
        authors.pixel_auroc)


def test_test_scripts_write_the_normalisation_and_intervals(tmp_path):
    """test_few.py and test_zero.py --normalisation reference on synthetic data: the results file names
    it, its AUROCs have intervals around them with the recorded resamples and seed."""
    data = generate(tmp_path / 'data', size=32, n_test=3, n_valid=3, shots=(2,), iterations=1)
    flags = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', *map(str, LEVELS),
             '--img_size', str(SIZE), '--device', 'cpu', '--data_path', str(data), '--obj', 'Brain',
             '--normalisation', 'reference', '--bootstrap', '200', '--bootstrap_seed', '7']
    # Untrained adapters, saved as a checkpoint so that the test scripts read one.
    torch.manual_seed(0)
    adapted = MultiLevelAdaptedCLIP(create_model('tiny-clip', img_size=SIZE, pretrained=None), LEVELS)
    (tmp_path / 'ckpt').mkdir()
    from mvfa.engine.checkpoint import save_adapters
    save_adapters(adapted, tmp_path / 'ckpt' / 'Brain.pth', {'setting': 'zero-shot'})
    for main, extra in ((test_few.main, ['--shot', '2', '--fewshot_seed_dir', str(data / 'fewshot_seed')]),
                        (test_zero.main, [])):
        results = tmp_path / f'{main.__module__}.json'
        main(flags + extra + ['--save_path', str(tmp_path / 'ckpt'), '--results', str(results)])
        record = json.loads(results.read_text())
        assert record['normalisation'] == 'reference'
        boot = record['bootstrap']
        assert (boot['resamples'], boot['seed'], boot['stream']) == (200, 7, 'Brain')
        for level in ('image', 'pixel'):
            interval = boot[f'{level}_auroc']
            assert len(interval['replicates']) == 200
            assert interval['low'] <= record[f'{level}_auroc'] + 0.05 and interval['low'] <= interval['high']
        assert 0 < boot['pixel_auroc']['bin_error_bound'] < 0.01
