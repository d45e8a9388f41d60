"""Faithfulness: every output of the authors' code in the parity fixture (tests/parity), reproduced.

Tolerances are those of tests/parity/README.md, except where a test says why.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import PARITY
from CLIP import MultiLevelAdaptedCLIP
from dataset.medical_few import MedDataset
from dataset.medical_zero import MedTestDataset
from loss import BinaryDiceLoss, FocalLoss, MVFALoss
from mvfa.engine.checkpoint import load_adapters
from mvfa.engine.evaluation import Evaluation, evaluate
from mvfa.method.memory_bank import build_memory_bank
from mvfa.engine.training import AdapterOptimizers, train_step
from prompt import encode_text_with_prompt_ensemble
from utils import augment

CPU = torch.device('cpu')
SCORE_TOL = 1e-4
AUC_TOL = 1e-6
WEIGHT_TOL = 1e-5
# Every key of expected.npz must match one of these, each checked by a test below.
COVERED = [r'pos_embed_240', r'text/\w+', r'load/Brain/\w+', r'augment/\w+', r'loss/\w+', r'tokens/.+',
           r'test_few/\w+/\w+', r'test_few_trained/\w+/\w+', r'test_zero/\w+/\w+', r'train_few/\w+/\w+',
           r'train_zero/\w+/\w+']
OBJECTS = ('Brain', 'Liver', 'Retina_RESC', 'Chest', 'Retina_OCT2017', 'Histopathology')


def close(actual, expected, atol: float) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=0, atol=atol)


def text(clip, obj: str) -> torch.Tensor:
    with torch.no_grad():
        return encode_text_with_prompt_ensemble(clip, obj, CPU)


def few_shot_data(obj: str, shot: int) -> MedDataset:
    return MedDataset(PARITY / 'data', obj, 240, shot, 0, PARITY / 'fewshot_seed')


def test_every_key_is_covered(expected):
    uncovered = [key for key in expected if not any(re.fullmatch(p, key) for p in COVERED)]
    assert uncovered == []


def test_positional_embedding_resized(parity_clip, expected):
    close(parity_clip.visual.positional_embedding.detach(), expected['pos_embed_240'], SCORE_TOL)


@pytest.mark.parametrize('obj', OBJECTS)
def test_text_features(parity_clip, expected, obj):
    features = text(parity_clip, obj)
    assert features.shape == (96, 2)
    close(features, expected[f'text/{obj}'], SCORE_TOL)


def test_data_loading(expected, parity_settings):
    data = few_shot_data('Brain', parity_settings['shot'])
    close(data[0][0], expected['load/Brain/test_x0'], SCORE_TOL)
    close(data[len(data) - 1][2], expected['load/Brain/test_mask_last'], SCORE_TOL)
    assert data.labels == expected['load/Brain/labels'].tolist()
    close(data.fewshot_norm_img, expected['load/Brain/fewshot_norm'], SCORE_TOL)
    close(data.fewshot_abnorm_img, expected['load/Brain/fewshot_abnorm'], SCORE_TOL)
    close(data.fewshot_abnorm_mask, expected['load/Brain/fewshot_abnorm_mask'], SCORE_TOL)


def test_augmentation(expected):
    images, masks = augment(torch.from_numpy(expected['augment/in_img']), torch.from_numpy(expected['augment/in_mask']))
    close(images, expected['augment/img'], SCORE_TOL)
    close(masks, expected['augment/mask'], SCORE_TOL)
    images, masks = augment(torch.from_numpy(expected['augment/in_img']))
    close(images, expected['augment/img_nomask'], SCORE_TOL)
    close(masks, expected['augment/mask_nomask'], 0)


def test_losses(expected):
    probs, target = torch.from_numpy(expected['loss/prob']), torch.from_numpy(expected['loss/target'])
    assert FocalLoss()(probs, target).item() == pytest.approx(float(expected['loss/focal']), rel=1e-4)
    assert BinaryDiceLoss()(probs[:, 1], target[:, 0]).item() == pytest.approx(float(expected['loss/dice']), rel=1e-4)


def test_adapter_tokens(parity_model, expected):
    with torch.no_grad():
        pooled, seg, det = parity_model(torch.from_numpy(expected['tokens/input']))
    assert pooled.shape == (2, 96) and len(seg) == len(det) == 4
    for level in range(4):
        close(seg[level], expected[f'tokens/seg/{level}'], SCORE_TOL)
        close(det[level], expected[f'tokens/det/{level}'], SCORE_TOL)


def check_few_shot_test(model, clip, expected, key: str, obj: str, shot: int, batch_size: int) -> None:
    data = few_shot_data(obj, shot)
    normal, _ = augment(data.fewshot_norm_img)
    bank = build_memory_bank(model, normal, batch_size)
    result = evaluate(model, DataLoader(data, batch_size=batch_size), text(clip, obj), data.has_masks, bank,
                      progress=False)
    assert_evaluation_matches(result, expected, f'{key}/{obj}')


def assert_evaluation_matches(result: Evaluation, expected, prefix: str) -> None:
    """Labels, normalised scores and AUROCs equal the reference's; pixel ones only where it has them."""
    assert result.labels.tolist() == expected[f'{prefix}/labels'].tolist()
    close(result.image_scores, expected[f'{prefix}/image_scores'], SCORE_TOL)
    assert result.image_auroc == pytest.approx(float(expected[f'{prefix}/image_auc']), abs=AUC_TOL)
    if f'{prefix}/pixel_scores' in expected:
        close(result.pixel_scores, expected[f'{prefix}/pixel_scores'], SCORE_TOL)
        assert result.pixel_auroc == pytest.approx(float(expected[f'{prefix}/pixel_auc']), abs=AUC_TOL)
    else:
        assert result.pixel_scores is None and result.pixel_auroc is None


@pytest.mark.parametrize('obj,batch_size', [('Brain', 1), ('Chest', 4)])
def test_few_shot_test(parity_model, parity_clip, expected, parity_settings, obj, batch_size):
    check_few_shot_test(parity_model, parity_clip, expected, 'test_few', obj, parity_settings['shot'], batch_size)


@pytest.mark.parametrize('obj,batch_size', [('Brain', 4), ('Chest', 1)])
def test_few_shot_test_trained(parity_model, parity_clip, expected, parity_settings, parity_files, obj, batch_size):
    load_adapters(parity_model, parity_files / 'adapters_trained.pth')
    check_few_shot_test(parity_model, parity_clip, expected, 'test_few_trained', obj, parity_settings['shot'],
                        batch_size)


@pytest.mark.parametrize('obj', ['Brain', 'Chest', 'Retina_OCT2017'])
def test_zero_shot_test(parity_model, parity_clip, expected, parity_files, obj):
    load_adapters(parity_model, parity_files / 'adapters_trained.pth')
    data = MedTestDataset(PARITY / 'data', obj, 240)
    result = evaluate(parity_model, DataLoader(data, batch_size=3), text(parity_clip, obj), data.has_masks,
                      progress=False)
    assert_evaluation_matches(result, expected, f'test_zero/{obj}')


def assert_adapters_match(model: MultiLevelAdaptedCLIP, reference_file: Path) -> None:
    """Adapter weights equal the reference's after training.

    Adam divides each update by sqrt(v) + 1e-8, so a weight whose gradient is ~1e-11 moves by an
    amount that float rounding in that gradient decides (the thread count changes which weights):
    a few in a thousand such weights differ by more than 1e-5. All others must be within 1e-5,
    and none may be off by more than a few Adam steps of lr 1e-3.
    """
    reference = torch.load(reference_file, weights_only=True)
    differences = torch.cat([(getattr(model, key).state_dict()[name] - weight).abs().flatten()
                             for key in ('seg_adapters', 'det_adapters') for name, weight in reference[key].items()])
    assert (differences > WEIGHT_TOL).float().mean().item() < 5e-3
    assert differences.max().item() < 5e-3
    assert differences.median().item() < 1e-7


def few_shot_training_set(data: MedDataset):
    abnormal, abnormal_masks = augment(data.fewshot_abnorm_img, data.fewshot_abnorm_mask)
    normal, normal_masks = augment(data.fewshot_norm_img)
    labels = torch.cat([torch.ones(len(abnormal)), torch.zeros(len(normal))])
    return torch.cat([abnormal, normal]), torch.cat([abnormal_masks, normal_masks]), labels


def test_few_shot_training_steps(parity_model, parity_clip, expected, parity_settings, parity_files):
    """Brain's steps from the initial adapters, then Chest's, each with fresh optimizers; then the
    trained adapters score the test sets as the reference's trained adapters do."""
    for obj, reference_file in (('Brain', 'adapters_after_train_few_Brain.pth'), ('Chest', 'adapters_trained.pth')):
        data = few_shot_data(obj, parity_settings['shot'])
        images, masks, labels = few_shot_training_set(data)
        features = text(parity_clip, obj)
        optimizers = AdapterOptimizers(parity_model, 1e-3)
        losses = [train_step(parity_model, optimizers, MVFALoss(parity_model.config), images[[i]], labels[[i]],
                             masks[[i]] if data.has_masks else None, features).item()
                  for i in expected[f'train_few/{obj}/order']]
        np.testing.assert_allclose(losses, expected[f'train_few/{obj}/losses'], rtol=1e-4)
        assert_adapters_match(parity_model, parity_files / reference_file)
    for obj in ('Brain', 'Chest'):
        check_few_shot_test(parity_model, parity_clip, expected, 'test_few_trained', obj, parity_settings['shot'], 5)


def test_zero_shot_training_steps(parity_model, parity_clip, expected, parity_files):
    for obj in ('Liver', 'Histopathology'):
        data = MedTestDataset(PARITY / 'data', obj, 240)
        image, label, mask = data[int(expected[f'train_zero/{obj}/idx'][0])]
        optimizers = AdapterOptimizers(parity_model, 1e-4)
        loss = train_step(parity_model, optimizers, MVFALoss(parity_model.config), image[None], torch.tensor([label]),
                          mask[None] if data.has_masks else None, text(parity_clip, obj)).item()
        assert loss == pytest.approx(float(expected[f'train_zero/{obj}/loss']), rel=1e-4)
    reference = torch.load(parity_files / 'adapters_after_train_zero.pth', weights_only=True)
    for key in ('seg_adapters', 'det_adapters'):
        for name, weight in reference[key].items():
            close(getattr(parity_model, key).state_dict()[name], weight, WEIGHT_TOL)
