"""The method's rules (SPEC.md), each checked directly on a tiny random CLIP and synthetic data.

Every test names, in its docstring, the one-line bug it exists to catch: bugs that the rest of the
suite only caught through the parity fixture, statistically, or not at all. No parity fixture is
needed here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

# Every production name this file uses, imported in one place (ported when modules move).
import test_few
import test_zero
import train_few
import train_zero
from CLIP import MultiLevelAdaptedCLIP, create_model
from dataset.readers import MedTestDataset, load_mask
from dataset.medical_few import MedDataset
from dataset.medical_zero import MedTrainDataset
from dataset.synthetic import generate
from mvfa.method import scoring
from mvfa.runs import few_shot, zero_shot
from mvfa.engine.checkpoint import load_adapters, read_checkpoint, save_adapters
from dataset.objects import OBJECTS, has_masks
from loss import MVFALoss
from mvfa.engine.evaluation import Evaluation, evaluate
from mvfa.method.memory_bank import build_memory_bank
from mvfa.engine.training import AdapterOptimizers, train_step
from prompt import TEMPLATES, encode_text_with_prompt_ensemble
from utils import augment

SIZE = 56  # 4 x 4 patches of the tiny CLIP (patch 14)
PATCHES = (SIZE // 14) ** 2
SCRIPT_SIZE = 28  # the scripts' runs: 2 x 2 patches, the smallest input the tiny CLIP takes
FEATURES = [3, 6]
CPU = torch.device('cpu')
# The authors' prompt states, written out here rather than read from prompt.py.
NORMAL_STATES = ['{}', 'flawless {}', 'perfect {}', 'unblemished {}', '{} without flaw', '{} without defect',
                 '{} without damage']
ABNORMAL_STATES = ['damaged {}', 'broken {}', '{} with flaw', '{} with defect', '{} with damage']
# Selection scores the scripted evaluations return, in order: a drop, a rise, a tie, a drop.
SCRIPTED_SCORES = [0.6, 0.5, 0.7, 0.7, 0.4]


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return create_model('tiny-clip', img_size=SIZE, pretrained=None)


@pytest.fixture()
def model(tiny) -> MultiLevelAdaptedCLIP:
    torch.manual_seed(1)
    return MultiLevelAdaptedCLIP(tiny, FEATURES)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """Synthetic 32 px data of all six objects: 1 test image per class, 2 valid ones, 1-shot lists."""
    return generate(tmp_path_factory.mktemp('rules'), size=32, n_test=1, n_valid=2, shots=(1,), iterations=1)


def script_flags(data: Path, save: Path, obj: str) -> List[str]:
    return ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '--device', 'cpu',
            '--img_size', str(SCRIPT_SIZE), '--data_path', str(data), '--obj', obj, '--save_path', str(save)]


def object_of_image(data: Path, size: int) -> Dict[bytes, str]:
    """Which object each test image (as loaded at `size`) belongs to, keyed by its pixels."""
    lookup = {}
    for obj in OBJECTS:
        split = MedTestDataset(data, obj, size)
        for index in range(len(split)):
            lookup[split[index][0].numpy().tobytes()] = obj
    return lookup


def random_text(seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(96, 2, generator=generator), dim=0)


def scripted_evaluate(monkeypatch, module, scores: List[float]) -> List[float]:
    """Make `module.evaluate` return evaluations whose selection score is `scores`, in order."""
    remaining = list(scores)

    def fake(*args, **kwargs) -> Evaluation:
        score = remaining.pop(0)
        return Evaluation(labels=np.array([0, 1]), image_scores=np.array([0.0, 1.0]), image_auroc=score)
    monkeypatch.setattr(module, 'evaluate', fake)
    return remaining


# ---------------------------------------------------------------- memory bank

def test_memory_bank_holds_every_token_with_the_class_tokens(model):
    """Catches: the memory bank built without the class tokens (`t[:, 1:]` in `scoring.normalised_bank` or
    patch tokens passed to it in `memory_bank.build_memory_bank`). Each level's bank is N x (1 + L) rows,
    the normalised tokens in order, and a class-token query is at distance 0 from it."""
    images = torch.rand(3, 3, SIZE, SIZE)
    bank = build_memory_bank(model, images, 2)
    with torch.no_grad():
        seg, det = model.adapter_tokens(images)
    for level in range(len(FEATURES)):
        for tokens, level_bank in ((seg[level], bank.seg[level]), (det[level], bank.det[level])):
            assert level_bank.shape == (3 * (1 + PATCHES), 96)
            torch.testing.assert_close(level_bank, F.normalize(tokens.reshape(-1, 96), dim=-1), atol=1e-6, rtol=0)
            class_tokens = tokens[:, 0]
            distance = 1 - scoring.nearest_similarity(class_tokens, level_bank)
            torch.testing.assert_close(distance, torch.zeros(3), atol=1e-5, rtol=0)
            # Without the class tokens the same queries would be far from the bank: the check is not vacuous.
            patches_only = F.normalize(tokens[:, 1:].reshape(-1, 96), dim=-1)
            assert (1 - scoring.nearest_similarity(class_tokens, patches_only)).min() > 1e-3


# ---------------------------------------------------------------- zero-shot training: leave-one-out, own text

def test_zero_shot_training_set_is_the_five_other_objects(data):
    """Catches: the target object left in the zero-shot training set (`if obj != class_name` dropped in
    `MedTrainDataset`). For every target: it never appears, each of the five others does, with all its
    test images, and an item's source index names the object its image comes from."""
    lookup = object_of_image(data, 32)
    for target in OBJECTS:
        train_set = MedTrainDataset(data, target, 32)
        others = [obj for obj in ('Brain', 'Liver', 'Retina_RESC', 'Retina_OCT2017', 'Chest', 'Histopathology')
                  if obj != target]
        assert list(train_set.sources) == others
        seen = []
        for index in range(len(train_set)):
            image, _, _, source = train_set[index]
            obj = lookup[image.numpy().tobytes()]
            assert train_set.sources[source] == obj
            seen.append(obj)
        assert target not in seen
        assert sorted(seen) == sorted(others * 2)  # 1 normal + 1 abnormal test image each


@pytest.fixture(scope='module')
def zero_shot_run(data, tmp_path_factory) -> Dict:
    """train_zero.py's main for target Liver, 1 epoch of 10 one-image batches, with `train_step` replaced
    by a spy that records its arguments and `evaluate` by SCRIPTED_SCORES (5 evaluations, every 2 batches)."""
    save = tmp_path_factory.mktemp('zero')
    steps = []

    def spy(model, optimizers, loss_fn, images, labels, masks, text_features, *args, **kwargs):
        steps.append((model, images.clone(), masks, text_features.clone()))
        return torch.tensor(0.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zero_shot, 'train_step', spy)
        remaining = scripted_evaluate(patch, zero_shot, SCRIPTED_SCORES)
        result = train_zero.main(script_flags(data, save, 'Liver') + ['--epoch', '1', '--batch_size', '1'])
    return {'steps': steps, 'remaining': remaining, 'result': result, 'save': save}


def test_zero_shot_training_scores_each_source_with_its_own_text(data, zero_shot_run):
    """Catches: train_zero.py passing the target's text features (`target_text`) to `train_step`
    instead of `source_text[source]`. Every step gets the features of the object its images come
    from, computed independently; masks only for objects with masks; the target never trains."""
    lookup = object_of_image(data, SCRIPT_SIZE)
    steps = zero_shot_run['steps']
    clip = steps[0][0].clipmodel
    with torch.no_grad():
        expected = {obj: encode_text_with_prompt_ensemble(clip, obj, CPU).float() for obj in OBJECTS}
    seen = set()
    for _, images, masks, text_features in steps:
        objects = {lookup[image.numpy().tobytes()] for image in images}
        assert len(objects) == 1
        obj = objects.pop()
        seen.add(obj)
        torch.testing.assert_close(text_features, expected[obj], atol=1e-6, rtol=0)
        assert (masks is not None) == has_masks(obj)
        # The target's text would differ: the check is not vacuous.
        assert (expected[obj] - expected['Liver']).abs().max() > 1e-3
    assert len(steps) == 10 and seen == set(OBJECTS) - {'Liver'}


# ---------------------------------------------------------------- model selection as the scripts use it

def test_few_shot_selection_keeps_the_earlier_of_equal_epochs_and_never_a_worse_one(data, tmp_path, monkeypatch):
    """Catches: train_few.py constructing `ModelSelection(keep_ties=True)` (must be False: strict '>'),
    and a selection that keeps a worse epoch (the comparison in `ModelSelection.consider` flipped).
    Scores per epoch 0.6, 0.5, 0.7, 0.7, 0.4: the kept epoch is 2."""
    remaining = scripted_evaluate(monkeypatch, few_shot, SCRIPTED_SCORES)
    monkeypatch.setattr(few_shot, 'train_step', lambda *args, **kwargs: torch.tensor(0.0))  # what is trained does not matter
    flags = script_flags(data, tmp_path, 'Chest') + ['--shot', '1', '--iterate', '0', '--fewshot_seed_dir',
                                                     str(data / 'fewshot_seed'), '--batch_size', '22']
    result = train_few.main(flags + ['--epoch', str(len(SCRIPTED_SCORES))])
    assert remaining == []
    assert result.image_auroc == 0.7
    sidecar = json.loads((tmp_path / 'Chest.json').read_text())
    assert sidecar['step'] == 'epoch 2' and sidecar['image_auroc'] == 0.7


def test_zero_shot_selection_keeps_the_later_of_equal_steps_and_never_a_worse_one(zero_shot_run):
    """Catches: train_zero.py constructing `ModelSelection(keep_ties=False)` (must be True: '>='), and a
    selection that keeps a worse step. 10 batches, scored every 2: 0.6, 0.5, 0.7, 0.7, 0.4 at batches
    0, 2, 4, 6, 8: the kept step is batch 6."""
    assert zero_shot_run['remaining'] == []
    assert zero_shot_run['result'].image_auroc == 0.7
    sidecar = json.loads((zero_shot_run['save'] / 'Liver.json').read_text())
    assert sidecar['step'] == 'epoch 0 batch 6' and sidecar['image_auroc'] == 0.7


# ---------------------------------------------------------------- the residual on the stream

def test_adapted_stream_is_0_8_stream_plus_0_1_each_adapter(model, tiny):
    """Catches: the residual weights changed (0.8 / 0.1 in `residual_stream` or the
    residual weights of `mvfa.common.config.PAPER`). The raw stream `adapt` returns, before any LayerNorm, equals a hand
    computation with the adapters' weights: x <- 0.8 x + 0.1 fc2_seg + 0.1 fc2_det after each level."""
    images = torch.rand(2, 3, SIZE, SIZE)
    blocks = tiny.visual.transformer.resblocks
    with torch.no_grad():
        start = model.frozen_stream(images)
        stream, seg, det = model.adapt(start)
        x = start
        for level, (seg_adapter, det_adapter) in enumerate(zip(model.seg_adapters, model.det_adapters)):
            if level > 0:
                for block in blocks[FEATURES[level - 1]:FEATURES[level]]:
                    x = block(x)
            seg_hidden = F.leaky_relu(x @ seg_adapter.fc1[0].weight.T, 0.01)
            det_hidden = F.leaky_relu(x @ det_adapter.fc1[0].weight.T, 0.01)
            torch.testing.assert_close(seg[level], seg_hidden, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(det[level], det_hidden, atol=1e-5, rtol=1e-5)
            seg_out = F.leaky_relu(seg_hidden @ seg_adapter.fc2[0].weight.T, 0.01)
            det_out = F.leaky_relu(det_hidden @ det_adapter.fc2[0].weight.T, 0.01)
            assert min((0.1 * seg_out).abs().max(), (0.1 * det_out).abs().max()) > 1e-2  # not vacuous
            x = 0.8 * x + 0.1 * seg_out + 0.1 * det_out
    torch.testing.assert_close(stream, x, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- prompts

def test_normal_column_from_normal_states_abnormal_from_abnormal(tiny):
    """Catches: normal and abnormal prompts swapped (the state lists, the column order in prompt.py, or
    NORMAL_COLUMN / ABNORMAL_COLUMN). Column 0 is the normalised mean of the normal sentences' normalised
    embeddings, column 1 that of the abnormal ones; scores read column 1 as the abnormal state."""
    text = encode_text_with_prompt_ensemble(tiny, 'Brain', CPU).detach()
    assert text.shape == (96, 2)
    with torch.no_grad():
        for column, states in enumerate((NORMAL_STATES, ABNORMAL_STATES)):
            sentences = [template.format(state.format('Brain')) for state in states for template in TEMPLATES]
            assert len(sentences) == 35 * len(states)
            embeddings = F.normalize(tiny.encode_text(open_clip.tokenize(sentences)), dim=-1)
            torch.testing.assert_close(text[:, column], F.normalize(embeddings.mean(dim=0), dim=0),
                                       atol=1e-6, rtol=0)
    assert (text[:, 0] - text[:, 1]).abs().max() > 1e-3  # the two columns differ: the check is not vacuous
    # A token lying on one column: its abnormal probability is softmax(100 * [cos to normal, cos to abnormal])[1].
    cosine = float(text[:, 0] @ text[:, 1])
    for column in (0, 1):
        tokens = text[:, column].expand(1, 1 + PATCHES, 96)
        logits = torch.tensor([1.0, cosine] if column == 0 else [cosine, 1.0]) * 100
        expected = logits.softmax(dim=0)[1]
        torch.testing.assert_close(scoring.zero_shot_image_scores([tokens], text), expected[None], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- min-max over the whole test set

def test_min_max_is_over_the_whole_test_set_not_per_image(model):
    """Catches: min-max normalisation per image (or per batch) instead of over the test set
    (`scoring.min_max_normalise` reducing over dims 1.., or `evaluation.evaluate` normalising each batch).
    Hand numbers first, then `evaluate` on 3 images scored one per batch against the same formula."""
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[10.0, 12.0], [14.0, 20.0]]])
    torch.testing.assert_close(scoring.min_max_normalise(maps), maps / 20)
    few = torch.tensor([[[5.0, 5.0], [6.0, 7.0]], [[1.0, 3.0], [5.0, 9.0]]])
    torch.testing.assert_close(scoring.fuse(maps, few), 0.5 * maps / 20 + 0.5 * (few - 1) / 8)

    images, text = torch.rand(3, 3, SIZE, SIZE), random_text()
    masks = torch.zeros(3, 1, SIZE, SIZE)
    masks[2, :, :20, :20] = 1
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 0, 1]), masks), batch_size=1)
    bank = build_memory_bank(model, torch.rand(2, 3, SIZE, SIZE), 2)
    fused = evaluate(model, loader, text, True, bank=bank, progress=False)
    with torch.no_grad():
        seg, det = model.adapter_tokens(images)
        zero = scoring.zero_shot_maps(seg, text, SIZE)
        few = scoring.few_shot_maps(seg, bank, 'seg', SIZE)

    def over_set(x):
        return (x - x.min()) / (x.max() - x.min())

    def per_image(x):
        low, high = x.flatten(1).min(1).values, x.flatten(1).max(1).values
        return (x - low[:, None, None]) / (high - low)[:, None, None]
    expected = 0.5 * over_set(zero) + 0.5 * over_set(few)
    np.testing.assert_allclose(fused.pixel_scores, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(fused.image_scores, expected.flatten(1).amax(1).numpy(), atol=1e-5)
    assert (0.5 * per_image(zero) + 0.5 * per_image(few) - expected).abs().max() > 1e-2  # not vacuous

    zero_shot = evaluate(model, loader, text, False, progress=False)
    with torch.no_grad():
        image_scores = scoring.zero_shot_image_scores(det, text)
    np.testing.assert_allclose(zero_shot.image_scores, over_set(image_scores).numpy(), atol=1e-5)


# ---------------------------------------------------------------- which adapters a step trains

def test_seg_adapters_step_only_for_images_with_masks(model):
    """Catches: seg adapters never stepped (or always stepped) in `training.train_step` / `AdapterOptimizers.step`. A step with
    masks changes every trained seg and det weight; with masks=None only the det ones (the seg
    adapters of the first level do get gradients then, through the stream, and must not move).
    The last level's fc2 layers feed no token, so no step moves them."""
    images, labels = torch.rand(2, 3, SIZE, SIZE), torch.tensor([0.0, 1.0])
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[1, :, 10:30, 10:30] = 1
    text = random_text()
    unread = f'{len(FEATURES) - 1}.fc2.0.weight'
    for with_masks in (True, False):
        optimizers = AdapterOptimizers(model, 1e-3)
        before = {key: {name: value.clone() for name, value in getattr(model, key).state_dict().items()}
                  for key in ('seg_adapters', 'det_adapters')}
        loss = train_step(model, optimizers, MVFALoss(model.config), images, labels, masks if with_masks else None, text)
        assert torch.isfinite(loss)
        changed = {key: {name for name, value in getattr(model, key).state_dict().items()
                         if not torch.equal(value, before[key][name])} for key in before}
        trained = set(before['det_adapters']) - {unread}
        assert changed['det_adapters'] == trained
        assert changed['seg_adapters'] == (trained if with_masks else set())
        if not with_masks:
            assert model.seg_adapters[0].fc1[0].weight.grad.abs().max() > 0  # not vacuous


# ---------------------------------------------------------------- checkpoint format

def test_checkpoint_keys_are_the_authors(model, tmp_path):
    """Catches: renamed checkpoint keys (ADAPTER_KEYS in mvfa/engine/checkpoint.py, or the adapters' module
    names). Saved: exactly `seg_adapters` / `det_adapters` with `<level>.fc1.0.weight`,
    `<level>.fc2.0.weight`; and a dict written by hand in the authors' format loads."""
    save_adapters(model, tmp_path / 'ours.pth')
    saved = torch.load(tmp_path / 'ours.pth', weights_only=True)
    names = {f'{level}.{fc}.0.weight' for level in range(len(FEATURES)) for fc in ('fc1', 'fc2')}
    assert set(saved) == {'seg_adapters', 'det_adapters'}
    assert set(saved['seg_adapters']) == set(saved['det_adapters']) == names

    generator = torch.Generator().manual_seed(3)
    authors = {key: {f'{level}.fc1.0.weight': torch.randn(96, 128, generator=generator) for level in range(2)}
               for key in ('seg_adapters', 'det_adapters')}
    for key in authors:
        authors[key].update({f'{level}.fc2.0.weight': torch.randn(128, 96, generator=generator) for level in range(2)})
    torch.save(authors, tmp_path / 'authors.pth')
    assert read_checkpoint(tmp_path / 'authors.pth').keys() == authors.keys()
    load_adapters(model, tmp_path / 'authors.pth')
    for key, adapters in (('seg_adapters', model.seg_adapters), ('det_adapters', model.det_adapters)):
        for level in range(2):
            assert torch.equal(adapters[level].fc1[0].weight, authors[key][f'{level}.fc1.0.weight'])
            assert torch.equal(adapters[level].fc2[0].weight, authors[key][f'{level}.fc2.0.weight'])


# ---------------------------------------------------------------- the memory bank of few-shot training

def test_few_shot_training_bank_holds_the_normal_support_images_only(data, tmp_path, monkeypatch):
    """Catches: few-shot model selection scoring against a bank of the abnormal support streams
    (`streams[:len(abnormal)]` for `streams[len(abnormal):]` in `few_shot.few_shot_training`).
    At every evaluation of a training run, the bank equals one built by hand, with the model as it is
    then, from the augmented normal support images (not from their cached streams)."""
    support = MedDataset(data, 'Brain', SCRIPT_SIZE, 1, 0, data / 'fewshot_seed')
    normal, _ = augment(support.fewshot_norm_img)
    abnormal, _ = augment(support.fewshot_abnorm_img, support.fewshot_abnorm_mask)
    banks_checked = []

    def checked_evaluate(model, loader, text_features, has_masks, bank=None, **kwargs) -> Evaluation:
        expected = build_memory_bank(model, normal, 4)
        wrong = build_memory_bank(model, abnormal, 4)
        for head in ('seg', 'det'):
            for level_bank, level_expected, level_wrong in zip(getattr(bank, head), getattr(expected, head),
                                                               getattr(wrong, head)):
                assert level_bank.shape == (len(normal) * (1 + (SCRIPT_SIZE // 14) ** 2), 96)
                torch.testing.assert_close(level_bank, level_expected, atol=1e-5, rtol=0)
                assert (level_wrong - level_expected).abs().max() > 1e-3  # not vacuous
        banks_checked.append(bank)
        return evaluate(model, loader, text_features, has_masks, bank, **kwargs)
    monkeypatch.setattr(few_shot, 'evaluate', checked_evaluate)
    flags = script_flags(data, tmp_path, 'Brain') + ['--shot', '1', '--iterate', '0', '--fewshot_seed_dir',
                                                     str(data / 'fewshot_seed'), '--batch_size', '22']
    train_few.main(flags + ['--epoch', '2'])
    assert len(banks_checked) == 2  # one per epoch; the kept epoch's test result is reused


# ---------------------------------------------------------------- the defaults a user gets

def script_defaults(monkeypatch, script, module, body: str, argv: List[str]):
    """The flags `script.main(argv)` hands to its body, which is not run (nor are the data and checkpoint
    checks before it: there are no data at the default --data_path)."""
    captured = []
    monkeypatch.setattr(module, body, lambda args, *rest: captured.append(args))
    for check in ('validate_object', 'validate_leave_one_out', 'check_checkpoint_exists'):
        if hasattr(script, check):
            monkeypatch.setattr(script, check, lambda *args, **kwargs: None)
    script.main(argv)
    return captured[0]


def test_every_default_a_user_gets_is_the_papers(monkeypatch, data, tmp_path):
    """Catches: a default of the method changed (MVFAConfig's few_shot_learning_rate 1e-4, seed 112, levels,
    img_size, epochs, betas, fusion weights, evaluations per epoch, or a script passing the wrong rate).
    The paper's values are written here, not read back from mvfa/common/config.py; the optimizer's rate and
    betas are read from a real optimizer built for a default run."""
    paper = {'img_size': 240, 'features_list': [6, 12, 18, 24], 'seed': 111, 'model_name': 'ViT-L-14-336',
             'pretrain': 'openai', 'quick_gelu': False, 'adaptation': 'adapter', 'precision': 'auto'}
    training = {'epoch': 50, 'batch_size': 1, 'selection': 'test', 'save_model': 1}
    few_shot_flags = {'shot': 4, 'iterate': 0}
    runs = {
        'train_few': (train_few, few_shot, 'few_shot_training', {**paper, **training, **few_shot_flags,
                                                                 'learning_rate': 1e-3, 'obj': 'Liver'}),
        'train_zero': (train_zero, zero_shot, 'zero_shot_training', {**paper, **training, 'learning_rate': 1e-4,
                                                                     'obj': 'Retina_RESC'}),
        'test_few': (test_few, few_shot, 'few_shot_test', {**paper, **few_shot_flags, 'obj': 'Liver'}),
        'test_zero': (test_zero, zero_shot, 'zero_shot_test', {**paper, 'obj': 'Retina_RESC'}),
    }
    for name, (script, module, body, expected) in runs.items():
        args = script_defaults(monkeypatch, script, module, body, [])
        assert {flag: getattr(args, flag) for flag in expected} == expected, name
    monkeypatch.undo()

    # What the model and the optimizer of a default few-shot run hold (tiny model flags only).
    built = []
    monkeypatch.setattr(few_shot, 'AdapterOptimizers', lambda model, rate: built.append(
        (model, AdapterOptimizers(model, rate))) or built[-1][1])
    flags = script_flags(data, tmp_path, 'Brain') + ['--shot', '1', '--fewshot_seed_dir', str(data / 'fewshot_seed'),
                                                     '--epoch', '1', '--save_model', '0']
    train_few.main(flags)
    model, optimizers = built[0]
    for optimizer in (optimizers.seg, optimizers.det):
        assert optimizer.param_groups[0]['lr'] == 1e-3
        assert optimizer.param_groups[0]['betas'] == (0.5, 0.999)
    config = model.config
    assert (config.zero_shot_weight, config.few_shot_weight) == (0.5, 0.5)
    assert (config.residual_keep, config.residual_adapter) == (0.8, 0.1)
    assert config.logit_scale == 100.0
    assert config.evaluations_per_epoch == 5


# ---------------------------------------------------------------- zero-shot evaluations per epoch

def test_zero_shot_training_scores_the_target_every_fifth_of_an_epoch(tmp_path_factory, monkeypatch):
    """Catches: zero-shot training scoring the target other than every `len(loader) // 5` steps
    (`evaluations_per_epoch` 4, or `len(batches) / 5` rounded otherwise). 20 one-image batches: scored at
    batches 0, 4, 8, 12 and 16 (four times per epoch would score at 0, 5, 10 and 15)."""
    data = generate(tmp_path_factory.mktemp('twenty'), size=32, n_test=2, n_valid=1, shots=(1,), iterations=1)
    remaining = scripted_evaluate(monkeypatch, zero_shot, [0.1, 0.2, 0.3, 0.4, 0.5])
    monkeypatch.setattr(zero_shot, 'train_step', lambda *args, **kwargs: torch.tensor(0.0))
    save = tmp_path_factory.mktemp('every-fifth')
    train_zero.main(script_flags(data, save, 'Liver') + ['--epoch', '1', '--batch_size', '1'])
    assert remaining == []  # exactly five evaluations
    # Rising scores: the last one is kept, at batch 16.
    assert json.loads((save / 'Liver.json').read_text())['step'] == 'epoch 0 batch 16'


# ---------------------------------------------------------------- masks

def test_grey_mask_values_are_abnormal_above_one_half_only(tmp_path):
    """Catches: masks binarised at > 0 instead of > 0.5 (`load_mask` in dataset/readers.py): a mask with grey
    values (resized or JPEG-compressed) must not count 0.3 as abnormal. 0 and 77 (0.30) read as 0,
    200 (0.78) and 255 as 1."""
    grey = np.array([[0, 77], [200, 255]], dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)
    Image.fromarray(grey).save(tmp_path / 'mask.png')
    mask = load_mask(tmp_path / 'mask.png', 8)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(mask, expected[None])
