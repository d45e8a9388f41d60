"""The model builder and the adapted model: sizes from the model, frozen CLIP, any batch size."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from CLIP import CLIP_Inplanted, MultiLevelAdaptedCLIP, WeightsError, create_model
from mvfa.method import scoring


@pytest.fixture(scope='module')
def tiny():
    return create_model('tiny-clip', img_size=56, pretrained=None)


def test_shipped_config_builds_at_the_requested_size(tiny):
    assert tiny.visual.positional_embedding.shape == (1 + 4 * 4, 128)
    assert all(not p.requires_grad for p in tiny.parameters())
    assert not tiny.training


def test_exact_gelu_by_default_quick_gelu_on_request():
    def activation(model):
        return type(model.visual.transformer.resblocks[0].mlp.gelu).__name__
    assert activation(create_model('tiny-clip', 28, None)) == 'GELU'
    assert activation(create_model('tiny-clip', 28, None, quick_gelu=True)) == 'QuickGELU'


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(WeightsError, match="unknown model 'ViT-Q-99'"):
        create_model('ViT-Q-99', 240, None)


def test_adapter_sizes_come_from_the_model(tiny):
    model = MultiLevelAdaptedCLIP(tiny, [2, 7])
    assert len(model.seg_adapters) == len(model.det_adapters) == 2
    assert model.seg_adapters[0].fc1[0].weight.shape == (96, 128)  # embed_dim x width
    assert model.det_adapters[1].fc2[0].weight.shape == (128, 96)
    assert isinstance(model.seg_adapters[0].fc1[1], nn.LeakyReLU)
    assert CLIP_Inplanted is MultiLevelAdaptedCLIP
    trainable = {name.split('.')[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'seg_adapters', 'det_adapters'}


def test_the_models_config_is_the_one_it_was_built_with(tiny):
    """Catches: `model.config` left at the paper's levels (6 12 18 24) and size (240) for a model built with
    others: the loss upsamples to `config.img_size`, and the sidecar's reader trusts it."""
    model = MultiLevelAdaptedCLIP(tiny, [2, 7])
    assert (model.config.levels, model.config.img_size, model.img_size) == ((2, 7), 56, 56)
    assert model.config.residual_keep == 0.8 and model.config.zero_shot_weight == 0.5  # the rest is the paper's


@pytest.mark.parametrize('features', [[0, 3], [3, 13], [6, 3], [3, 3], []])
def test_bad_feature_levels_are_refused(tiny, features):
    with pytest.raises(ValueError, match='features_list'):
        MultiLevelAdaptedCLIP(tiny, features)


def test_tokens_of_an_image_do_not_depend_on_its_batch(tiny):
    model = MultiLevelAdaptedCLIP(tiny, [3, 6, 9, 12])
    images = torch.rand(5, 3, 56, 56)
    with torch.no_grad():
        pooled, seg, det = model(images)
        seg_single, det_single = model.adapter_tokens(images[3:4])
    assert pooled.shape == (5, 96)
    assert [t.shape for t in seg] == [(5, 17, 96)] * 4
    for level in range(4):
        torch.testing.assert_close(seg[level][3:4], seg_single[level], atol=1e-5, rtol=0)
        torch.testing.assert_close(det[level][3:4], det_single[level], atol=1e-5, rtol=0)


def test_forward_stream_matches_frozen_clip_when_adapters_are_silent(tiny):
    """With zero fc2 weights the adapters only rescale the stream by 0.8 at each level."""
    model = MultiLevelAdaptedCLIP(tiny, [12])
    nn.init.zeros_(model.seg_adapters[0].fc2[0].weight)
    nn.init.zeros_(model.det_adapters[0].fc2[0].weight)
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        pooled, _, _ = model(images)
        stream = tiny.visual.transformer(tiny.visual._embeds(images)) * 0.8
        expected, _ = tiny.visual._pool(stream)
    torch.testing.assert_close(pooled, expected @ tiny.visual.proj, atol=1e-5, rtol=1e-5)


def test_training_reaches_only_the_adapters(tiny):
    model = MultiLevelAdaptedCLIP(tiny, [3, 6])
    model.train()
    assert not model.image_encoder.training
    seg, det = model.adapter_tokens(torch.rand(1, 3, 56, 56))
    (seg[-1].sum() + det[-1].sum()).backward()
    assert model.seg_adapters[0].fc1[0].weight.grad is not None
    assert all(p.grad is None for p in tiny.parameters())


def test_memory_bank_search_is_exact_in_blocks(monkeypatch):
    queries, bank = torch.randn(7, 5), torch.nn.functional.normalize(torch.randn(23, 5), dim=-1)
    expected = (torch.nn.functional.normalize(queries, dim=-1) @ bank.T).amax(dim=1)
    monkeypatch.setattr(scoring, 'CPU_SIMILARITY_BLOCK', 7 * 4)  # blocks of 4 bank rows
    torch.testing.assert_close(scoring.nearest_similarity(queries, bank), expected)


def test_fuse_normalises_each_part_over_the_whole_set():
    zero, few = torch.tensor([1.0, 3.0, 5.0]), torch.tensor([10.0, 30.0, 20.0])
    torch.testing.assert_close(scoring.fuse(zero, few), torch.tensor([0.0, 0.75, 0.75]))


def test_constant_scores_normalise_to_zeros_not_nan():
    torch.testing.assert_close(scoring.min_max_normalise(torch.full((2, 3), 0.7)), torch.zeros(2, 3))


def test_fused_attention_computes_open_clips_blocks(tiny):
    """Tokens and adapter gradients through `fused_block` equal those through open_clip's blocks."""
    images = torch.rand(3, 3, 56, 56)
    results = []
    for fused in (True, False):
        torch.manual_seed(1)  # the same adapters both times
        model = MultiLevelAdaptedCLIP(tiny, [3, 6, 9, 12], fused_attention=fused)
        assert model.fused_attention is fused
        seg, det = model.adapter_tokens(images)
        (seg[-1].square().sum() + det[0].sum()).backward()
        results.append((seg, det, model.seg_adapters[0].fc1[0].weight.grad))
    (seg_fused, det_fused, grad_fused), (seg_plain, det_plain, grad_plain) = results
    for level in range(4):
        torch.testing.assert_close(seg_fused[level], seg_plain[level], atol=1e-5, rtol=0)
        torch.testing.assert_close(det_fused[level], det_plain[level], atol=1e-5, rtol=0)
    assert grad_fused.abs().max() > 0
    torch.testing.assert_close(grad_fused, grad_plain, atol=1e-5, rtol=1e-4)


def test_blocks_that_fused_block_does_not_know_run_their_own_forward(tiny):
    class OtherBlock(type(tiny.visual.transformer.resblocks[0])):
        pass

    clip = create_model('tiny-clip', img_size=56, pretrained=None)
    assert MultiLevelAdaptedCLIP(clip, [3]).fused_attention
    clip.visual.transformer.resblocks[5].__class__ = OtherBlock
    assert not MultiLevelAdaptedCLIP(clip, [3]).fused_attention


def test_frozen_stream_is_the_stream_the_first_adapters_read(tiny):
    """Every block up to the first adapted one is frozen, so `frozen_stream` runs all of them, and tokens
    from its stream equal tokens from the images."""
    model = MultiLevelAdaptedCLIP(tiny, [4, 8])
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        expected = tiny.visual._embeds(images)
        for block in tiny.visual.transformer.resblocks[:4]:
            expected = block(expected)
        stream = model.frozen_stream(images)
        torch.testing.assert_close(stream, expected, atol=1e-5, rtol=0)
        for from_images, from_stream in zip(model.adapter_tokens(images), model.adapter_tokens_from_stream(stream)):
            for level in range(2):
                torch.testing.assert_close(from_images[level], from_stream[level], atol=1e-6, rtol=0)


def test_tokens_skip_the_last_levels_fc2(tiny):
    """Only the stream after the last level reads that level's fc2 layers: `adapter_tokens` spares them."""
    model = MultiLevelAdaptedCLIP(tiny, [3, 6])
    calls = []
    for adapters in (model.seg_adapters, model.det_adapters):
        for adapter in adapters:
            adapter.fc2.register_forward_hook(lambda module, inputs, output: calls.append(module))
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        seg, det = model.adapter_tokens(images)
        assert calls == [model.seg_adapters[0].fc2, model.det_adapters[0].fc2]
        _, seg_forward, det_forward = model(images)
    assert len(calls) == 2 + 4  # forward runs both levels' fc2 layers
    for level in range(2):
        torch.testing.assert_close(seg[level], seg_forward[level])
        torch.testing.assert_close(det[level], det_forward[level])


def test_frozen_weights_stored_in_bf16_change_no_number():
    """Under bf16 autocast the frozen weights are cast at every call anyway: storing them in bf16
    gives the same tokens and adapter gradients, bit for bit."""
    images = torch.rand(2, 3, 56, 56)
    results = []
    for cast in (False, True):
        torch.manual_seed(1)  # the same random CLIP and adapters both times
        model = MultiLevelAdaptedCLIP(create_model('tiny-clip', img_size=56, pretrained=None), [3, 6, 9, 12])
        if cast:
            model.set_precision('bf16')
            assert model.image_encoder.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.bfloat16
            assert model.image_encoder.conv1.weight.dtype == torch.bfloat16
            assert model.seg_adapters[0].fc1[0].weight.dtype == torch.float32  # trained in fp32
            assert model.clipmodel.token_embedding.weight.dtype == torch.float32  # text tower untouched
        with torch.autocast('cpu', dtype=torch.bfloat16):
            seg, det = model.adapter_tokens(images)
            (seg[-1].float().square().sum() + det[0].float().sum()).backward()
        results.append([*seg, *det, model.seg_adapters[0].fc1[0].weight.grad])
    assert all(torch.equal(plain, cast) for plain, cast in zip(*results))


@pytest.mark.parametrize('precision,dtype', [('fp32', torch.float32), ('bf16', torch.bfloat16)])
def test_build_model_stores_frozen_weights_at_the_run_precision(precision, dtype):
    from mvfa.runs.cli import parser
    from mvfa.engine.session import build_model
    args = parser('', obj='Brain', save_path='.', few_shot=False, training=False).parse_args(
        ['--model_name', 'tiny-clip', '--pretrain', 'none', '--img_size', '56', '--features_list', '3',
         '--precision', precision])
    model = build_model(args, torch.device('cpu'), precision)
    assert model.precision == precision
    assert model.image_encoder.transformer.resblocks[5].mlp.c_fc.weight.dtype == dtype
