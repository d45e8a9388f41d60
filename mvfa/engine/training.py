"""Training the adapters: the frozen streams computed once, the optimizers, one step.

A step reads nothing back to the host: its loss stays on the device (`EpochLosses` reads an
epoch's losses once), and a step whose loss is not finite is skipped by the optimizers on the
device (fused Adam's `found_inf`), not by a Python `if`.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from CLIP.adapter import MultiLevelAdaptedCLIP
from loss import MVFALoss
from mvfa.engine.evaluation import FrozenStreams


@torch.no_grad()  # not inference_mode: training steps start from these streams
def frozen_streams(model: MultiLevelAdaptedCLIP, images: Tensor, batch_size: int) -> Tensor:
    """The streams the first adapters read, on the model's device: the blocks up to them are
    frozen, so images seen every epoch need them once (ViT-L at 240 px: 1.2 MB per image in fp32)."""
    streams = []
    for start in range(0, len(images), batch_size):
        with model.autocast():
            streams.append(model.frozen_stream(images[start:start + batch_size].to(model.device)))
    return torch.cat(streams)


def stream_bytes(model: MultiLevelAdaptedCLIP, images: int) -> int:
    """Memory that `cache_streams` takes for `images` images."""
    visual = model.image_encoder
    tokens = 1 + (model.img_size // visual.conv1.stride[0]) ** 2
    element = 4 if model.precision == 'fp32' else 2
    return images * tokens * visual.conv1.out_channels * element


def cache_streams(model: MultiLevelAdaptedCLIP, loader: DataLoader) -> DataLoader:
    """A loader of the frozen streams of `loader`'s images, with their labels and masks, computed
    once for a set that is scored again and again; `evaluate` reads it like the images."""
    streams, labels, masks = [], [], []
    # Iterating a DataLoader draws from the global generator: forked, so that caching leaves the
    # training order (and every later number) as it would be without it.
    with torch.random.fork_rng(devices=[]):
        for images, batch_labels, batch_masks in loader:
            streams.append(frozen_streams(model, images, len(images)))
            labels.append(batch_labels)
            masks.append(batch_masks > 0.5)
    return DataLoader(FrozenStreams(torch.cat(streams), torch.cat(labels), torch.cat(masks)),
                      batch_size=loader.batch_size)


def cache_if_wanted(model: MultiLevelAdaptedCLIP, loader: Optional[DataLoader], mode: str) -> Optional[DataLoader]:
    """`loader` with its streams cached (`cache_streams`) if `mode` ('on', 'off', 'auto') says so.

    auto: on a CUDA device where the streams fit in half its free memory; off on a CPU, where a
    BrainMRI-sized cache (4.4 GB) would compete with everything else for the host's memory.
    """
    if loader is None or mode == 'off':
        return loader
    if mode == 'auto':
        if model.device.type != 'cuda':
            return loader
        free, _ = torch.cuda.mem_get_info(model.device)
        if stream_bytes(model, len(loader.dataset)) > free // 2:
            return loader
    return cache_streams(model, loader)


class AdapterOptimizers:
    """Adam for the seg adapters and Adam for the det adapters (the authors' betas), fused where
    torch has fused kernels for the device; the seg adapters step only for images with masks."""

    def __init__(self, model: MultiLevelAdaptedCLIP, learning_rate: float) -> None:
        betas = model.config.adam_betas
        try:
            self.seg, self.det = (torch.optim.Adam(adapters.parameters(), lr=learning_rate, betas=betas, fused=True)
                                  for adapters in (model.seg_adapters, model.det_adapters))
        except RuntimeError:  # torch has no fused Adam for this device
            self.seg, self.det = (torch.optim.Adam(adapters.parameters(), lr=learning_rate, betas=betas)
                                  for adapters in (model.seg_adapters, model.det_adapters))

    @property
    def fused(self) -> bool:
        """Read from the optimizers: a state loaded from a run made without fused Adam turns it off."""
        return bool(self.det.param_groups[0].get('fused'))

    def step(self, loss: Tensor, has_masks: bool) -> None:
        """Back-propagate `loss` and step; nothing moves when it is not finite."""
        self.seg.zero_grad(set_to_none=True)
        self.det.zero_grad(set_to_none=True)
        loss.backward()
        optimizers = [self.det, self.seg] if has_masks else [self.det]
        if self.fused:
            not_finite = (~torch.isfinite(loss)).float()
            for optimizer in optimizers:
                optimizer.found_inf = not_finite
                optimizer.step()
        elif torch.isfinite(loss):
            for optimizer in optimizers:
                optimizer.step()

    def state_dicts(self) -> List[dict]:
        return [self.seg.state_dict(), self.det.state_dict()]

    def load_state_dicts(self, states: List[dict]) -> None:
        for optimizer, state in zip((self.seg, self.det), states):
            optimizer.load_state_dict(state)


def train_step(model: MultiLevelAdaptedCLIP, optimizers: AdapterOptimizers, loss_fn: MVFALoss, inputs: Tensor,
               labels: Tensor, masks: Optional[Tensor], text_features: Tensor, from_streams: bool = False) -> Tensor:
    """One optimisation step on images, or on their `frozen_streams` (`from_streams`); the seg adapters
    are stepped only when there are masks, as published. Returns the loss, on the device and
    detached; a loss that is not finite marks a skipped step."""
    tokens = model.adapter_tokens_from_stream if from_streams else model.adapter_tokens
    device = model.device
    with model.autocast():
        seg, det = tokens(inputs.to(device, non_blocking=True))
        loss = loss_fn(seg, det, text_features, labels.to(device, non_blocking=True).float(),
                       None if masks is None else masks.to(device, non_blocking=True))
    optimizers.step(loss, has_masks=masks is not None)
    return loss.detach()


class EpochLosses:
    """An epoch's step losses, kept on the device and read once; `done`: those of its first steps, read
    back from a resume state (on the CPU)."""

    def __init__(self, done: Optional[Tensor] = None) -> None:
        self.earlier = torch.empty(0) if done is None else done
        self.losses: List[Tensor] = []

    def read(self) -> Tensor:
        """Every loss so far, in float32 on the CPU (the resume state keeps them)."""
        if not self.losses:
            return self.earlier
        return torch.cat([self.earlier, torch.stack(self.losses).float().cpu()])

    def add(self, loss: Tensor) -> None:
        self.losses.append(loss)

    def summary(self) -> tuple[float, int]:
        """(mean of the finite losses, number of skipped steps)."""
        losses = self.read()
        finite = torch.isfinite(losses)
        mean = losses[finite].mean().item() if finite.any() else float('nan')
        return mean, int((~finite).sum())
