"""MVFA's multi-level visual feature adapter around a frozen open_clip ViT image encoder.

Change the adapter here: `ClipAdapter` is its layers, `residual_stream` how its output re-enters
the frozen stream, `MultiLevelAdaptedCLIP.adapt` where the levels sit between the blocks.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import ContextManager, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from mvfa.common.config import ADAPTATIONS, PAPER, PRECISIONS, MVFAConfig

# One tensor per adapted level, (B, 1 + L, embed_dim), class token first.
LevelTokens = List[Tensor]
# The dtypes fp16/bf16 autocast to.
AUTOCAST_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


class ClipAdapter(nn.Module):
    """Bottleneck adapter: fc1 (width -> embed_dim) gives the level's tokens, fc2 maps them back."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(width, embed_dim, bias=False), nn.LeakyReLU())
        self.fc2 = nn.Sequential(nn.Linear(embed_dim, width, bias=False), nn.LeakyReLU())

    def forward(self, stream: Tensor, map_back: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
        """(tokens, their map back to the stream's width); `map_back=False` skips fc2 (None)."""
        tokens = self.fc1(stream)
        return tokens, (self.fc2(tokens) if map_back else None)


def residual_stream(stream: Tensor, seg_back: Tensor, det_back: Tensor, config: MVFAConfig = PAPER) -> Tensor:
    """The stream after an adapted level: keep * x + adapter * seg + adapter * det (0.8 / 0.1 / 0.1)."""
    return config.residual_keep * stream + config.residual_adapter * seg_back + config.residual_adapter * det_back


def check_features(features: Sequence[int], depth: int) -> List[int]:
    """The adapted blocks as ints: increasing, 1-based, within a ViT of `depth` blocks."""
    features = [int(level) for level in features]
    if not features or features != sorted(set(features)) or not 1 <= features[0] <= features[-1] <= depth:
        raise ValueError(f'features_list {features} must be increasing block indices within 1..{depth} '
                         f'(this model has {depth} blocks)')
    return features


def check_plain_vit(visual: nn.Module) -> None:
    """MVFA reads the token stream of a plain CLIP ViT: class token, no attention pooling."""
    if not (isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.pool_type == 'tok'
            and not visual.final_ln_after_pool):
        raise ValueError(f'{type(visual).__name__} is not a plain CLIP ViT image tower (class-token pooling, '
                         f'no attention pooling): MVFA adapts the token stream of one')


def fuses_attention(block: nn.Module) -> bool:
    """Whether `fused_block` computes what `block` does: open_clip's plain self-attention block."""
    attention = getattr(block, 'attn', None)
    return (type(block) is ResidualAttentionBlock and isinstance(attention, nn.MultiheadAttention)
            and attention.batch_first and attention.in_proj_weight is not None and attention.bias_k is None
            and not hasattr(block, 'ln_1_kv'))


def fused_block(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """`block(x)` with its attention computed by `F.scaled_dot_product_attention`.

    The same function to float rounding, but one fused (flash) attention kernel: in inference,
    nn.MultiheadAttention's fast path multiplies, softmaxes and copies in separate passes (a
    ViT-L block takes 5 % longer on a CPU), and in training it reshapes through extra copies.
    """
    attention = block.attn
    batch, length, width = x.shape
    qkv = F.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, attention.num_heads, width // attention.num_heads).permute(2, 0, 3, 1, 4)
    heads = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(attention.out_proj(heads))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class MultiLevelAdaptedCLIP(nn.Module):
    """A frozen CLIP image encoder with a seg and a det adapter after each block in `features`.

    `features` are 1-based block indices, increasing. The model carries where and how it runs:
    `device` (that of its adapters), `precision` ('fp32', or 'fp16'/'bf16' autocast, set with
    `set_precision`) and `img_size`. `forward(images)` returns `(pooled, seg_tokens, det_tokens)`,
    the tokens one `(B, 1 + L, embed_dim)` tensor per level, class token first.
    `seg_adapters` / `det_adapters` hold the only trainable weights; their state dicts are the
    authors' checkpoint format. With `fused_attention` (the default) the blocks run through
    `fused_block`; False runs open_clip's own block forward. With `adaptation='projector'` the
    stream stays CLIP's own: each level's tokens are its fc1 of the frozen stream (fc2 is unused),
    so each level is trained by its own losses alone.
    """

    def __init__(self, clip_model: CLIP, features: Sequence[int], fused_attention: bool = True,
                 config: MVFAConfig = PAPER, adaptation: str = 'adapter') -> None:
        super().__init__()
        visual = clip_model.visual
        check_plain_vit(visual)
        features = check_features(features, len(visual.transformer.resblocks))
        if adaptation not in ADAPTATIONS:
            raise ValueError(f'adaptation must be one of {", ".join(ADAPTATIONS)}, got {adaptation!r}')
        clip_model.requires_grad_(False)
        self.clipmodel = clip_model
        self.adaptation = adaptation
        self.image_encoder = visual
        self.features = features
        # The config of the model as built: the method's numbers with its own levels and input size.
        self.config = replace(config, levels=tuple(features), img_size=visual.image_size[0])
        self.precision = 'fp32'
        self.fused_attention = fused_attention and all(map(fuses_attention, visual.transformer.resblocks))
        width, embed_dim = visual.conv1.out_channels, visual.output_dim
        self.seg_adapters = nn.ModuleList(ClipAdapter(width, embed_dim) for _ in features)
        self.det_adapters = nn.ModuleList(ClipAdapter(width, embed_dim) for _ in features)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.seg_adapters[0].fc1[0].weight.device

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def train(self, mode: bool = True) -> 'MultiLevelAdaptedCLIP':
        """The frozen encoder stays in eval mode, in training too, as in the authors' code."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def set_precision(self, precision: str) -> 'MultiLevelAdaptedCLIP':
        """Run under fp16/bf16 autocast, or in fp32.

        In fp16/bf16 the frozen matrix weights (linear, attention and convolution layers) are
        stored in that dtype: autocast casts them at every call anyway (it keeps casts only of
        weights that require grad), so every number stays the same, bit for bit; what goes is a
        pass over 300 M weights per forward (ViT-L in bf16 on a CPU: 15 % of the time) and half
        their memory. A model set to fp16/bf16 cannot go back to fp32.
        """
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
        if self.precision in AUTOCAST_DTYPES and precision != self.precision:
            raise ValueError(f'the frozen weights are stored in {self.precision}: build the model again')
        if precision in AUTOCAST_DTYPES:
            for module in self.image_encoder.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
                    module.to(AUTOCAST_DTYPES[precision])
        self.precision = precision
        return self

    def autocast(self) -> ContextManager:
        """fp16/bf16 autocast on the model's device where its precision asks for it."""
        if self.precision == 'fp32':
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def run_blocks(self, stream: Tensor, start: int, stop: int) -> Tensor:
        """The stream through blocks start..stop - 1 (0-based)."""
        for block in self.image_encoder.transformer.resblocks[start:stop]:
            stream = fused_block(block, stream) if self.fused_attention else block(stream)
        return stream

    def input_stream(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, 1 + L, width) tokens entering the first block: patch embedding,
        class token, positional embedding and the pre-norm of open_clip's ViT."""
        visual = self.image_encoder
        patches = visual.conv1(images).flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        stream = torch.cat([class_token, patches], dim=1) + visual.positional_embedding.to(patches.dtype)
        return visual.ln_pre(visual.patch_dropout(stream))

    def frozen_stream(self, images: Tensor) -> Tensor:
        """The stream the first adapters read: the output of the first adapted block.

        No trainable weight acts before it, so it can be computed once and cached.
        """
        return self.run_blocks(self.input_stream(images), 0, self.features[0])

    def adapt(self, stream: Tensor, last_stream: bool = True) -> Tuple[Optional[Tensor], LevelTokens, LevelTokens]:
        """Adapters and the blocks between them, on a `frozen_stream`.

        Returns the stream after the last level, or with `last_stream=False` None, sparing the
        last level's fc2 layers, which only that stream reads. Projectors leave the stream as it is.
        """
        seg_tokens, det_tokens = [], []
        last_level = len(self.features) - 1
        for level, (seg_adapter, det_adapter) in enumerate(zip(self.seg_adapters, self.det_adapters)):
            if level > 0:
                stream = self.run_blocks(stream, self.features[level - 1], self.features[level])
            map_back = self.adaptation == 'adapter' and (last_stream or level < last_level)
            seg, seg_back = seg_adapter(stream, map_back)
            det, det_back = det_adapter(stream, map_back)
            seg_tokens.append(seg)
            det_tokens.append(det)
            if map_back:
                stream = residual_stream(stream, seg_back, det_back, self.config)
        return (stream if last_stream else None), seg_tokens, det_tokens

    def adapter_tokens(self, images: Tensor) -> Tuple[LevelTokens, LevelTokens]:
        """Seg and det tokens of every level of (B, 3, H, W) images, without running what no level reads."""
        return self.adapter_tokens_from_stream(self.frozen_stream(images))

    def adapter_tokens_from_stream(self, stream: Tensor) -> Tuple[LevelTokens, LevelTokens]:
        """Seg and det tokens of every level from a cached `frozen_stream` (B, 1 + L, width)."""
        _, seg_tokens, det_tokens = self.adapt(stream, last_stream=False)
        return seg_tokens, det_tokens

    def forward(self, images: Tensor) -> Tuple[Tensor, LevelTokens, LevelTokens]:
        stream, seg_tokens, det_tokens = self.adapt(self.frozen_stream(images))
        stream = self.run_blocks(stream, self.features[-1], len(self.image_encoder.transformer.resblocks))
        return self.pooled_embedding(stream), seg_tokens, det_tokens

    def pooled_embedding(self, stream: Tensor) -> Tensor:
        """CLIP's image embedding of the stream after the last block: the class token, normalised
        by `ln_post` and projected (a plain ViT, see `check_plain_vit`)."""
        pooled = self.image_encoder.ln_post(stream[:, 0])
        return pooled if self.image_encoder.proj is None else pooled @ self.image_encoder.proj


# The authors' name, kept so code written against their repository runs unchanged.
CLIP_Inplanted = MultiLevelAdaptedCLIP
