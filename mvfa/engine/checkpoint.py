"""Adapter checkpoints in the authors' format: `{'seg_adapters': state_dict, 'det_adapters': state_dict}`."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from CLIP.adapter import MultiLevelAdaptedCLIP
from mvfa.common.outputs import atomic_write_all, sidecar_path
from mvfa.common.sidecar import CheckpointError, check_checkpoint_exists

ADAPTER_KEYS = ('seg_adapters', 'det_adapters')


def torch_bytes(state: Dict) -> bytes:
    """`state` as torch.save writes it, in memory: written to disk by `atomic_write`, a full disk is an
    OSError there (torch.save writing a file itself reports it as a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_adapters(model: MultiLevelAdaptedCLIP, path: str | Path, metadata: Optional[Dict] = None) -> None:
    """Save the adapters (and, if given, a JSON sidecar of how they were made) atomically, both together."""
    path = Path(path)
    files = {path: torch_bytes({key: getattr(model, key).state_dict() for key in ADAPTER_KEYS})}
    if metadata is not None:
        files[sidecar_path(path)] = json.dumps(metadata, indent=2, default=str)
    atomic_write_all(files)


def keep_previous(path: Path) -> None:
    """Move the checkpoint at `path` and its sidecar aside as <Obj>.previous.pth / .json, saying so:
    a new training run never silently replaces the adapters of an earlier one."""
    previous = path.with_name(f'{path.stem}.previous{path.suffix}')
    os.replace(path, previous)
    if sidecar_path(path).is_file():
        os.replace(sidecar_path(path), sidecar_path(previous))
    print(f'{path} holds an earlier run\'s adapters: kept as {previous}')


def read_checkpoint(path: str | Path) -> Dict[str, Dict[str, torch.Tensor]]:
    """The adapter state dicts of a checkpoint saved by us or by the authors."""
    path = Path(path)
    check_checkpoint_exists(path)
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # damaged files raise many types
        raise CheckpointError(f'cannot read checkpoint {path} ({type(error).__name__}): it is damaged') from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in ADAPTER_KEYS):
        raise CheckpointError(f'{path} is not an MVFA checkpoint: it needs the keys {", ".join(ADAPTER_KEYS)}')
    return checkpoint


def load_adapters(model: MultiLevelAdaptedCLIP, path: str | Path,
                  checkpoint: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> None:
    """Load the adapters of `path` (or its already read `checkpoint`), checking they fit the model first."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    for key in ADAPTER_KEYS:
        expected = getattr(model, key).state_dict()
        found = checkpoint[key]
        if set(found) != set(expected):
            raise CheckpointError(
                f'{path} has {len(found) // 2} {key} levels, the model {len(expected) // 2} '
                f'(--features_list {" ".join(map(str, model.features))}): pass the --features_list it was trained with')
        for name, tensor in found.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointError(
                    f'{path}: {key}.{name} has shape {tuple(tensor.shape)}, the model needs '
                    f'{tuple(expected[name].shape)}: pass the --model_name it was trained with')
    for key in ADAPTER_KEYS:
        getattr(model, key).load_state_dict(checkpoint[key])
