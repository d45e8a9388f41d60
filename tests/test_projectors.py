"""The paper's Table 4 ablation: multi-level feature projectors instead of residual adapters.

Projectors read the frozen stream and feed nothing back, so the stream stays CLIP's own and each
level is trained by its own losses alone.
"""
from __future__ import annotations

import pytest
import torch

from CLIP import MultiLevelAdaptedCLIP, create_model
from mvfa.runs.cli import parser
from mvfa.engine.session import build_model

SIZE = 56
FEATURES = [3, 6, 9]


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return create_model('tiny-clip', img_size=SIZE, pretrained=None)


def projectors(tiny) -> MultiLevelAdaptedCLIP:
    torch.manual_seed(1)
    return MultiLevelAdaptedCLIP(tiny, FEATURES, adaptation='projector')


def test_projectors_leave_the_frozen_stream_as_clip_computes_it(tiny):
    """Catches: projector outputs added back into the stream. The stream after every level, the
    pooled embedding and each level's tokens are those of the frozen CLIP."""
    model = projectors(tiny)
    images = torch.rand(2, 3, SIZE, SIZE)
    blocks = tiny.visual.transformer.resblocks
    with torch.no_grad():
        stream, seg, det = model.adapt(model.frozen_stream(images))
        pooled, _, _ = model(images)
        plain = model.input_stream(images)
        start = 0
        for level, end in enumerate(FEATURES):
            for block in blocks[start:end]:
                plain = block(plain)
            start = end
            torch.testing.assert_close(seg[level], model.seg_adapters[level].fc1(plain), atol=1e-5, rtol=0)
            torch.testing.assert_close(det[level], model.det_adapters[level].fc1(plain), atol=1e-5, rtol=0)
        torch.testing.assert_close(stream, plain, atol=1e-5, rtol=0)
        for block in blocks[start:]:
            plain = block(plain)
        torch.testing.assert_close(pooled, tiny.visual(images), atol=1e-5, rtol=0)
        adapters = MultiLevelAdaptedCLIP(tiny, FEATURES)
        assert (adapters.adapt(adapters.frozen_stream(images))[0] - stream).abs().max() > 1e-3  # not vacuous


def test_a_levels_loss_moves_only_that_levels_projectors(tiny):
    """Catches: levels coupled through the stream. A loss on level 1's tokens gives gradients to
    level 1's fc1 and to nothing else; with adapters the earlier levels get some too."""
    images = torch.rand(2, 3, SIZE, SIZE)
    for adaptation, coupled in (('projector', False), ('adapter', True)):
        torch.manual_seed(1)
        model = MultiLevelAdaptedCLIP(tiny, FEATURES, adaptation=adaptation)
        seg, det = model.adapter_tokens(images)
        (seg[1].square().sum() + det[1].square().sum()).backward()
        for adapters in (model.seg_adapters, model.det_adapters):
            assert adapters[1].fc1[0].weight.grad.abs().max() > 0
            assert adapters[2].fc1[0].weight.grad is None
            earlier = adapters[0].fc1[0].weight.grad
            assert (earlier is not None and bool(earlier.abs().max() > 0)) is coupled


def test_the_scripts_build_projectors_on_request():
    args = parser('', obj='Brain', save_path='.', few_shot=False, training=False).parse_args(
        ['--model_name', 'tiny-clip', '--pretrain', 'none', '--img_size', '56', '--features_list', '3', '6',
         '--adaptation', 'projector'])
    assert build_model(args, torch.device('cpu'), 'fp32').adaptation == 'projector'
    assert parser('', obj='Brain', save_path='.', few_shot=False, training=False).parse_args([]).adaptation == 'adapter'
    with pytest.raises(ValueError, match='adaptation'):
        MultiLevelAdaptedCLIP(create_model('tiny-clip', img_size=SIZE, pretrained=None), [3], adaptation='both')
