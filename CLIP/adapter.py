"""MVFA's multi-level visual feature adapter around a frozen open_clip ViT image encoder."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import Tensor, nn
from open_clip.model import CLIP

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


class MultiLevelAdaptedCLIP(nn.Module):
    """A frozen CLIP image encoder with a seg and a det adapter after each block in `features`.

    `features` are 1-based block indices, increasing. `forward(images)` returns
    `(pooled, seg_tokens, det_tokens)`: the tokens are one `(B, 1 + L, embed_dim)` tensor per
    level, class token first. `seg_adapters` / `det_adapters` hold the only trainable weights and
    their state dicts are the authors' checkpoint format.
    """

    def __init__(self, clip_model: CLIP, features: Sequence[int]) -> None:
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
        width, embed_dim = visual.conv1.out_channels, visual.output_dim
        self.seg_adapters = nn.ModuleList(ClipAdapter(width, embed_dim) for _ in features)
        self.det_adapters = nn.ModuleList(ClipAdapter(width, embed_dim) for _ in features)
        self.eval()

    def train(self, mode: bool = True) -> 'MultiLevelAdaptedCLIP':
        """The frozen encoder stays in eval mode, in training too, as in the authors' code."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def _blocks(self, start: int, stop: int) -> nn.Sequential:
        return self.image_encoder.transformer.resblocks[start:stop]

    def embed(self, images: Tensor) -> Tensor:
        """The token stream entering the first adapted block.

        No trainable weight acts before that block, so this can be computed once and cached.
        """
        stream = self.image_encoder._embeds(images)
        for block in self._blocks(0, self.features[0] - 1):
            stream = block(stream)
        return stream

    def adapt(self, stream: Tensor) -> Tuple[Tensor, Tokens, Tokens]:
        """Run the adapted blocks on a stream from `embed`; returns the stream after the last level."""
        seg_tokens, det_tokens = [], []
        for level, (block_index, seg_adapter, det_adapter) in enumerate(
                zip(self.features, self.seg_adapters, self.det_adapters)):
            start = self.features[0] - 1 if level == 0 else self.features[level - 1]
            for block in self._blocks(start, block_index):
                stream = block(stream)
            seg_hidden, seg_out = seg_adapter(stream)
            det_hidden, det_out = det_adapter(stream)
            stream = RESIDUAL_KEEP * stream + RESIDUAL_ADAPTER * seg_out + RESIDUAL_ADAPTER * det_out
            seg_tokens.append(seg_hidden)
            det_tokens.append(det_hidden)
        return stream, seg_tokens, det_tokens

    def tokens(self, inputs: Tensor) -> Tuple[Tokens, Tokens]:
        """Seg and det tokens of every level, without running the blocks no level reads.

        `inputs` are images (B, 3, H, W) or, to skip the frozen blocks, their `embed` stream
        (B, 1 + L, width).
        """
        stream = inputs if inputs.dim() == 3 else self.embed(inputs)
        _, seg_tokens, det_tokens = self.adapt(stream)
        return seg_tokens, det_tokens

    def forward(self, images: Tensor) -> Tuple[Tensor, Tokens, Tokens]:
        stream, seg_tokens, det_tokens = self.adapt(self.embed(images))
        for block in self._blocks(self.features[-1], len(self.image_encoder.transformer.resblocks)):
            stream = block(stream)
        pooled, _ = self.image_encoder._pool(stream)
        if self.image_encoder.proj is not None:
            pooled = pooled @ self.image_encoder.proj
        return pooled, seg_tokens, det_tokens


# The authors' name, kept so code written against their repository runs unchanged.
CLIP_Inplanted = MultiLevelAdaptedCLIP
