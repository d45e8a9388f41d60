"""MVFA run the way the authors' code ran it, for bench.py to time against ours.

One image per forward pass, every CLIP weight marked `requires_grad=True` (set by bench.py's
`load_model`), attention weights requested from every block (no fused attention kernel), fp32
weights under autocast, the few-shot test scored per image and per level with the maps read back
to numpy, scikit-learn's AUROC, and plain Adam with the loss read back after every step. The
numbers come from the project's pure scoring functions and loss, so the scores match ours.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, List, Optional, Tuple

import numpy as np
import torch
from open_clip.transformer import ResidualAttentionBlock
from sklearn.metrics import roc_auc_score
from torch import Tensor
from torch.utils.data import DataLoader

from CLIP.adapter import AUTOCAST_DTYPES, MultiLevelAdaptedCLIP
from loss import MVFALoss
from mvfa.method import scoring
from mvfa.method.memory_bank import MemoryBank
from prompt import ABNORMAL_COLUMN

Scores = Tuple[np.ndarray, np.ndarray]  # (image scores (N,), pixel scores (N, S, S))


@contextlib.contextmanager
def attention_weights_requested() -> Iterator[None]:
    """Every block asks `nn.MultiheadAttention` for its attention weights, as the authors' modified
    open_clip did; this rules out the fused attention kernels. The text tower's causal mask is kept."""
    original = ResidualAttentionBlock.attention

    def attention(self, q_x: Tensor, k_x: Optional[Tensor] = None, v_x: Optional[Tensor] = None,
                  attn_mask: Optional[Tensor] = None) -> Tensor:
        k_x = q_x if k_x is None else k_x
        v_x = q_x if v_x is None else v_x
        attn_mask = None if attn_mask is None else attn_mask.to(q_x.dtype)
        return self.attn(q_x, k_x, v_x, need_weights=True, attn_mask=attn_mask)[0]

    ResidualAttentionBlock.attention = attention
    try:
        yield
    finally:
        ResidualAttentionBlock.attention = original


def authors_autocast(device: torch.device, precision: str) -> ContextManager:
    """Autocast over fp32 weights: the authors never stored the frozen weights in fp16."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


@contextlib.contextmanager
def reference_style(device: torch.device, precision: str) -> Iterator[None]:
    """Attention weights requested from every block, under the authors' autocast."""
    with attention_weights_requested(), authors_autocast(device, precision):
        yield


@torch.no_grad()
def reference_memory_bank(model: MultiLevelAdaptedCLIP, normal: Tensor) -> List[Tensor]:
    """Per level, the raw seg tokens (N (1 + L), C) of every normal image, one image per forward pass."""
    tokens = [model(image.to(model.device))[1] for image in normal.split(1)]
    return [torch.cat([per_image[level][0] for per_image in tokens]) for level in range(len(model.features))]


def one_level_seg_bank(level_bank: Tensor) -> MemoryBank:
    """A bank of one level's seg tokens, normalised afresh: the authors' cosine similarity
    normalised the whole bank again for every test image. The reference scores no det head."""
    return MemoryBank(seg=[scoring.normalised_bank([level_bank])], det=[])


@torch.no_grad()
def reference_evaluate(model: MultiLevelAdaptedCLIP, images: Tensor, labels: Tensor, masks: Tensor,
                       text_features: Tensor, bank: List[Tensor]) -> Scores:
    """The authors' few-shot test of a segmentation object: per image, per level, maps to numpy,
    the test-set normalisation and fusion over the whole set, then scikit-learn's AUROCs."""
    img_size = model.img_size
    text_features = text_features.to(model.device)
    zero_maps, few_maps = [], []
    for image in images.split(1):
        _, seg, _ = model(image.to(model.device))
        few_maps.append(np.sum([scoring.few_shot_maps([level], one_level_seg_bank(level_bank), 'seg', img_size)
                                .float().cpu().numpy() for level, level_bank in zip(seg, bank)], axis=0))
        # The authors upsampled both states' logits of a level, then took the softmax.
        zero_maps.append(np.sum([scoring.zero_shot_level_probs(level, text_features, img_size)[:, ABNORMAL_COLUMN]
                                 .float().cpu().numpy() for level in seg], axis=0))
    pixel_scores = scoring.fuse(torch.from_numpy(np.concatenate(zero_maps)), torch.from_numpy(np.concatenate(few_maps)))
    image_scores = pixel_scores.flatten(1).amax(dim=1)
    # The AUROCs are not returned: they are computed because the authors' test (and `evaluate`) does.
    roc_auc_score(labels.numpy(), image_scores.numpy())
    roc_auc_score((masks[:, 0] > 0.5).numpy().ravel(), pixel_scores.numpy().ravel())
    return image_scores.numpy(), pixel_scores.numpy()


def reference_train(model: MultiLevelAdaptedCLIP, loader: DataLoader, text_features: Tensor,
                    learning_rate: float) -> List[float]:
    """One epoch as the authors trained: the full forward pass of each batch of images (every
    block, gradients of the frozen weights too), plain Adam per head, the loss read back every
    step. The loader yields (images, masks, labels) of a segmentation object."""
    betas = model.config.adam_betas
    seg_optimizer = torch.optim.Adam(model.seg_adapters.parameters(), lr=learning_rate, betas=betas)
    det_optimizer = torch.optim.Adam(model.det_adapters.parameters(), lr=learning_rate, betas=betas)
    loss_fn = MVFALoss(model.config)
    text_features = text_features.to(model.device)
    losses = []
    for images, masks, labels in loader:
        _, seg, det = model(images.to(model.device))
        loss = loss_fn(seg, det, text_features, labels.to(model.device).float(), masks.to(model.device))
        seg_optimizer.zero_grad()
        det_optimizer.zero_grad()
        loss.backward()
        seg_optimizer.step()
        det_optimizer.step()
        losses.append(loss.item())
    return losses
