"""The shared scoring path: `score_batch`, the exact AUROC on the scores' device, and what the
device-side evaluation and training leave untouched (random streams, host round trips)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from CLIP import MultiLevelAdaptedCLIP, create_model
from mvfa.engine import training
from mvfa.method import scoring
from mvfa.engine.evaluation import FrozenStreams, evaluate, exact_auroc
from mvfa.method.memory_bank import MemoryBank, build_memory_bank
from mvfa.method.metrics import device_auroc
from mvfa.engine.runtime import configure_backends

SIZE = 56


@pytest.fixture(scope='module')
def model() -> MultiLevelAdaptedCLIP:
    torch.manual_seed(0)
    return MultiLevelAdaptedCLIP(create_model('tiny-clip', img_size=SIZE, pretrained=None), [3, 6, 9, 12])


@pytest.fixture(scope='module')
def text() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(96, 2, generator=torch.Generator().manual_seed(1)), dim=0)


def tokens_and_bank(model: MultiLevelAdaptedCLIP, images: int = 3):
    generator = torch.Generator().manual_seed(2)
    bank = build_memory_bank(model, torch.rand(4, 3, SIZE, SIZE, generator=generator), batch_size=4)
    with torch.no_grad():
        seg, det = model.adapter_tokens(torch.rand(images, 3, SIZE, SIZE, generator=generator))
    return seg, det, bank


def test_zero_shot_maps_equal_the_per_level_softmax_of_upsampled_logits(model, text):
    """One upsampling of every level's logit margin, then a sigmoid, is the authors' per-level
    upsampling of both logits followed by a softmax."""
    seg, _, _ = tokens_and_bank(model)
    expected = sum(scoring.zero_shot_level_probs(level, text, SIZE)[:, 1] for level in seg)
    torch.testing.assert_close(scoring.zero_shot_maps(seg, text, SIZE), expected, atol=1e-5, rtol=0)


def test_score_batch_computes_what_it_is_asked_for(model, text):
    seg, det, bank = tokens_and_bank(model)
    nothing = scoring.score_batch(seg, det, text, SIZE, image_scores=False)
    assert all(part is None for part in vars(nothing).values())
    zero = scoring.score_batch(seg, det, text, SIZE, map_head='seg')
    torch.testing.assert_close(zero.zero_image, scoring.zero_shot_image_scores(det, text))
    torch.testing.assert_close(zero.zero_map, scoring.zero_shot_maps(seg, text, SIZE))
    assert zero.few_image is None and zero.few_map is None
    fused = scoring.score_batch(seg, det, text, SIZE, bank, map_head='seg')
    torch.testing.assert_close(fused.few_map, scoring.few_shot_maps(seg, bank, 'seg', SIZE))
    # The few-shot image score is the mean of the det head's few-shot map (not the seg head's).
    det_map = scoring.few_shot_maps(det, bank, 'det', SIZE)
    torch.testing.assert_close(fused.few_image, det_map.flatten(1).mean(dim=1))
    assert not torch.allclose(fused.few_image, fused.few_map.flatten(1).mean(dim=1))
    with pytest.raises(ValueError, match='map_head'):
        scoring.score_batch(seg, det, text, SIZE, map_head='both')


def test_few_shot_maps_sum_each_levels_upsampled_distance(model):
    """Levels summed on the patch grid and upsampled once equal the per-level upsampled maps summed."""
    seg, _, bank = tokens_and_bank(model)
    expected = sum(scoring.upsample(bank.patch_distances('seg', level, scoring.patch_tokens(t))[:, None], SIZE)[:, 0]
                   for level, t in enumerate(seg))
    torch.testing.assert_close(scoring.few_shot_maps(seg, bank, 'seg', SIZE), expected, atol=1e-5, rtol=0)


def test_memory_bank_distance_is_one_minus_the_best_cosine():
    bank = MemoryBank(seg=[torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)], det=[])
    patches = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])
    expected = torch.tensor([[0.0, 1.0 - 2 ** -0.5, 1.0]])
    torch.testing.assert_close(bank.patch_distances('seg', 0, patches), expected)


@pytest.mark.parametrize('seed', range(3))
def test_device_auroc_equals_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels, scores = rng.integers(0, 2, 5000), rng.integers(0, 30, 5000).astype(np.float32)
    expected = roc_auc_score(labels, scores)
    assert device_auroc(torch.from_numpy(labels), torch.from_numpy(scores)) == pytest.approx(expected, abs=1e-12)
    assert exact_auroc(torch.from_numpy(labels), torch.from_numpy(scores)) == pytest.approx(expected, abs=1e-12)


def test_device_auroc_refuses_one_class_and_nan():
    with pytest.raises(ValueError, match='both classes'):
        device_auroc(torch.zeros(4), torch.rand(4))
    with pytest.raises(ValueError, match='NaN'):
        device_auroc(torch.tensor([0, 1]), torch.tensor([0.0, float('nan')]))


def test_evaluation_draws_no_random_number(model, text):
    """A DataLoader draws a seed per pass: evaluating must leave the training's random stream as it was."""
    data = TensorDataset(torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 0, 1, 1]), torch.zeros(4, 1, SIZE, SIZE))
    state = torch.get_rng_state()
    evaluate(model, DataLoader(data, batch_size=2, shuffle=True), text, has_masks=False, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_cached_streams_score_as_the_images(model, text):
    data = TensorDataset(torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 1, 0, 1]),
                         (torch.rand(4, 1, SIZE, SIZE) > 0.7).float())
    loader = DataLoader(data, batch_size=3)
    cached = training.cache_if_wanted(model, loader, 'on')
    assert isinstance(cached.dataset, FrozenStreams)
    _, _, bank = tokens_and_bank(model)
    from_images = evaluate(model, loader, text, has_masks=True, bank=bank, progress=False)
    from_streams = evaluate(model, cached, text, has_masks=True, bank=bank, progress=False)
    np.testing.assert_allclose(from_streams.pixel_scores, from_images.pixel_scores, atol=1e-6)
    assert from_streams.pixel_auroc == pytest.approx(from_images.pixel_auroc, abs=1e-9)


def test_cache_streams_auto_caches_on_a_gpu_where_the_streams_fit(monkeypatch):
    """auto: never on a CPU; on CUDA when the streams take at most half the free memory."""
    loader = DataLoader(TensorDataset(torch.zeros(100)), batch_size=10)
    monkeypatch.setattr(training, 'cache_streams', lambda model, loader: 'cached')
    visual = types.SimpleNamespace(conv1=torch.nn.Conv2d(3, 1024, 14, stride=14))
    gpu = types.SimpleNamespace(device=torch.device('cuda'), img_size=240, precision='fp32', image_encoder=visual)
    per_image = 290 * 1024 * 4  # ViT-L at 240 px: 1.2 MB per image in fp32
    assert training.stream_bytes(gpu, 100) == 100 * per_image
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device: (200 * per_image, 10 ** 12))
    assert training.cache_if_wanted(gpu, loader, 'auto') == 'cached'
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device: (200 * per_image - 1, 10 ** 12))
    assert training.cache_if_wanted(gpu, loader, 'auto') is loader
    assert training.cache_if_wanted(gpu, loader, 'on') == 'cached'
    assert training.cache_if_wanted(gpu, loader, 'off') is loader
    cpu = types.SimpleNamespace(**{**vars(gpu), 'device': torch.device('cpu')})
    assert training.cache_if_wanted(cpu, loader, 'auto') is loader
    assert training.cache_if_wanted(cpu, None, 'on') is None


@pytest.mark.parametrize('precision,tf32', [('fp32', False), ('fp16', True), ('bf16', True)])
def test_fp32_runs_without_tf32(precision, tf32):
    configure_backends(torch.device('cpu'), precision)
    try:
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        configure_backends(torch.device('cpu'), 'fp32')


def test_a_training_step_reads_nothing_back_to_the_host(model, text, monkeypatch):
    """The loss stays a device tensor and the non-finite check is the optimizer's, not a Python `if`."""
    from loss import MVFALoss
    optimizers = training.AdapterOptimizers(model, 1e-3)
    assert optimizers.fused

    def no_host_read(self):
        raise AssertionError('a training step read a tensor back to the host')
    monkeypatch.setattr(torch.Tensor, 'item', no_host_read)
    monkeypatch.setattr(torch.Tensor, '__bool__', no_host_read)
    loss = training.train_step(model, optimizers, MVFALoss(model.config), torch.rand(1, 3, SIZE, SIZE), torch.ones(1),
                               (torch.rand(1, 1, SIZE, SIZE) > 0.5).float(), text)
    monkeypatch.undo()
    assert loss.shape == () and not loss.requires_grad and torch.isfinite(loss)
