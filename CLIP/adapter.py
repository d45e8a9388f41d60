"""MVFA's multi-level visual feature adapter around a frozen open_clip ViT image encoder."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from open_clip.model import CLIP
from open_clip.transformer import ResidualAttentionBlock

# After an adapted block the stream is 0.8 * x + 0.1 * seg + 0.1 * det (the authors' weights):
# most of the frozen representation is kept so deeper CLIP blocks still see familiar input.
RESIDUAL_KEEP = 0.8
RESIDUAL_ADAPTER = 0.1

Tokens = List[Tensor]


class ClipAdapter(nn.Module):
    """Bottleneck adapter: fc1 (width -> embed_dim) gives the level's tokens, fc2 maps them back."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(width, embed_dim, bias=False), nn.LeakyReLU())
        self.fc2 = nn.Sequential(nn.Linear(embed_dim, width, bias=False), nn.LeakyReLU())

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        hidden = self.fc1(x)
        return hidden, self.fc2(hidden)


def fuses_attention(block: nn.Module) -> bool:
    """Whether `fused_block` computes what `block` does: open_clip's plain self-attention block."""
    attention = getattr(block, 'attn', None)
    return (type(block) is ResidualAttentionBlock and isinstance(attention, nn.MultiheadAttention)
            and attention.batch_first and attention._qkv_same_embed_dim and attention.bias_k is None
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

    `features` are 1-based block indices, increasing. `forward(images)` returns
    `(pooled, seg_tokens, det_tokens)`: the tokens are one `(B, 1 + L, embed_dim)` tensor per
    level, class token first. `seg_adapters` / `det_adapters` hold the only trainable weights and
    their state dicts are the authors' checkpoint format. With `fused_attention` (the default) the
    blocks run through `fused_block`; False runs open_clip's own block forward.
    """

    def __init__(self, clip_model: CLIP, features: Sequence[int], fused_attention: bool = True) -> None:
        super().__init__()
        visual = clip_model.visual
        depth = len(visual.transformer.resblocks)
        features = [int(level) for level in features]
        if not features or features != sorted(set(features)) or not 1 <= features[0] <= features[-1] <= depth:
            raise ValueError(f'features_list {features} must be increasing block indices within 1..{depth} '
                             f'(this model has {depth} blocks)')
        clip_model.requires_grad_(False)
        self.clipmodel = clip_model
        self.image_encoder = visual
        self.features = features
        self.fused_attention = fused_attention and all(map(fuses_attention, visual.transformer.resblocks))
        width, embed_dim = visual.conv1.out_channels, visual.output_dim
        self.seg_adapters = nn.ModuleList(ClipAdapter(width, embed_dim) for _ in features)
        self.det_adapters = nn.ModuleList(ClipAdapter(width, embed_dim) for _ in features)
        self.eval()

    def train(self, mode: bool = True) -> 'MultiLevelAdaptedCLIP':
        """The frozen encoder stays in eval mode, in training too, as in the authors' code."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def cast_frozen_weights(self, dtype: torch.dtype) -> None:
        """Store the frozen image encoder's matrix weights (linear, attention and convolution layers)
        in `dtype`, for a model that only ever runs under autocast to `dtype`.

        Autocast casts them to `dtype` at every call anyway (it keeps casts only of weights that
        require grad), so every number stays the same, bit for bit; what goes is a pass over 300 M
        weights per forward (ViT-L in bf16 on a CPU: 15 % of the time) and half their memory.
        """
        for module in self.image_encoder.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
                module.to(dtype)

    def run_blocks(self, stream: Tensor, start: int, stop: int) -> Tensor:
        """The stream through blocks start..stop - 1 (0-based)."""
        for block in self.image_encoder.transformer.resblocks[start:stop]:
            stream = fused_block(block, stream) if self.fused_attention else block(stream)
        return stream

    def embed(self, images: Tensor) -> Tensor:
        """The stream the first adapters read: the output of the first adapted block.

        No trainable weight acts before it, so this can be computed once and cached.
        """
        return self.run_blocks(self.image_encoder._embeds(images), 0, self.features[0])

    def adapt(self, stream: Tensor, last_stream: bool = True) -> Tuple[Optional[Tensor], Tokens, Tokens]:
        """Adapters and the blocks between them, on a stream from `embed`.

        Returns the stream after the last level, or with `last_stream=False` None, sparing the
        last level's fc2 layers, which only that stream reads.
        """
        seg_tokens, det_tokens = [], []
        for level, (seg_adapter, det_adapter) in enumerate(zip(self.seg_adapters, self.det_adapters)):
            if level > 0:
                stream = self.run_blocks(stream, self.features[level - 1], self.features[level])
            seg_hidden, det_hidden = seg_adapter.fc1(stream), det_adapter.fc1(stream)
            seg_tokens.append(seg_hidden)
            det_tokens.append(det_hidden)
            if last_stream or level < len(self.features) - 1:
                stream = (RESIDUAL_KEEP * stream + RESIDUAL_ADAPTER * seg_adapter.fc2(seg_hidden)
                          + RESIDUAL_ADAPTER * det_adapter.fc2(det_hidden))
        return (stream if last_stream else None), seg_tokens, det_tokens

    def tokens(self, inputs: Tensor) -> Tuple[Tokens, Tokens]:
        """Seg and det tokens of every level, without running what no level reads.

        `inputs` are images (B, 3, H, W) or, to skip the frozen blocks, their `embed` stream
        (B, 1 + L, width).
        """
        stream = inputs if inputs.dim() == 3 else self.embed(inputs)
        _, seg_tokens, det_tokens = self.adapt(stream, last_stream=False)
        return seg_tokens, det_tokens

    def forward(self, images: Tensor) -> Tuple[Tensor, Tokens, Tokens]:
        stream, seg_tokens, det_tokens = self.adapt(self.embed(images))
        stream = self.run_blocks(stream, self.features[-1], len(self.image_encoder.transformer.resblocks))
        return self.embedding(stream), seg_tokens, det_tokens

    def embedding(self, stream: Tensor) -> Tensor:
        """CLIP's pooled, projected image embedding of the stream after the last block."""
        pooled, _ = self.image_encoder._pool(stream)
        return pooled if self.image_encoder.proj is None else pooled @ self.image_encoder.proj


# The authors' name, kept so code written against their repository runs unchanged.
CLIP_Inplanted = MultiLevelAdaptedCLIP
