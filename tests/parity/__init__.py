"""The parity fixture: what the authors' MVFA code computed on a tiny CLIP (see README.md here).

`arrays.npz.xz` holds, losslessly, the reference's expected.npz, the tiny CLIP's weights and the four
adapter checkpoints, coded by pack.py so that xz compresses them well: float32 arrays with few distinct
values (images read from 8-bit PNGs) as an index per element into those values; the others as the byte
planes of their bit patterns after `order` wrapping differences, a trained adapter checkpoint as the
difference from the one its training started from. This module undoes that, bit for bit.
"""
from __future__ import annotations

import io
import json
import lzma
from functools import cache
from pathlib import Path
from typing import Dict

import numpy as np
import torch

FOLDER = Path(__file__).resolve().parent
ARRAYS = FOLDER / 'arrays.npz.xz'
CLIP_WEIGHTS = 'tiny_clip_336'
ADAPTERS = ('adapters_init', 'adapters_after_train_few_Brain', 'adapters_trained', 'adapters_after_train_zero')
ADAPTER_KEYS = ('seg_adapters', 'det_adapters')
# The token embedding keeps only the rows the prompts use; the others are zero (see README.md).
TOKEN_EMBEDDING = 'token_embedding.weight'
TOKEN_ROWS = 'token_embedding.rows'


def decode(stored: Dict[str, np.ndarray], layout: Dict[str, dict]) -> Dict[str, np.ndarray]:
    """The arrays pack.py coded into `stored`, as `layout` says (arrays it does not name are stored as they are)."""
    arrays: Dict[str, np.ndarray] = {}
    for key, data in stored.items():
        spec = layout.get(key)
        if spec is None:
            arrays[key] = data
        elif 'palette' in spec:
            arrays[key] = np.asarray(np.array(spec['palette'], np.uint32)[data]).view(np.float32)  # 0-d stays an array
        else:
            bits = np.ascontiguousarray(data.T).view('<u4').ravel()
            for _ in range(spec['order']):
                bits = np.cumsum(bits, dtype=np.uint32)  # wraps around, as the differences did
            if spec['base'] is not None:
                bits = bits + arrays[spec['base']].view('<u4').ravel()
            arrays[key] = bits.view('<f4').reshape(spec['shape'])
    return arrays


@cache
def arrays() -> Dict[str, np.ndarray]:
    with np.load(io.BytesIO(lzma.decompress(ARRAYS.read_bytes()))) as stored:
        layout = json.loads(str(stored['layout']))
        return decode({key: stored[key] for key in stored.files if key != 'layout'}, layout)


def group(prefix: str) -> Dict[str, np.ndarray]:
    """The arrays stored under `<prefix>/`, by the rest of their key, in their original order."""
    return {key[len(prefix) + 1:]: value for key, value in arrays().items() if key.startswith(prefix + '/')}


def expected() -> Dict[str, np.ndarray]:
    """expected.npz of the reference: its keys, dtypes and values."""
    return group('expected')


def clip_state_dict() -> Dict[str, torch.Tensor]:
    """tiny_clip_336.pt (336 px), with zeros in the token embedding rows no prompt uses."""
    stored = group(CLIP_WEIGHTS)
    vocab_size = json.loads((FOLDER / 'tiny.json').read_text())['text_cfg']['vocab_size']
    token_embedding = np.zeros((vocab_size, stored[TOKEN_EMBEDDING].shape[1]), np.float32)
    token_embedding[stored.pop(TOKEN_ROWS)] = stored[TOKEN_EMBEDDING]
    stored[TOKEN_EMBEDDING] = token_embedding
    return {key: torch.from_numpy(value.copy()) for key, value in stored.items()}


def adapters(name: str) -> Dict[str, Dict[str, torch.Tensor]]:
    """An adapter checkpoint in the reference format {'seg_adapters': sd, 'det_adapters': sd}."""
    return {key: {param: torch.from_numpy(value.copy()) for param, value in group(f'{name}/{key}').items()}
            for key in ADAPTER_KEYS}


def write_weights(folder: Path) -> None:
    """tiny_clip_336.pt and adapters_*.pth, as the reference saved them, into `folder`."""
    torch.save(clip_state_dict(), folder / f'{CLIP_WEIGHTS}.pt')
    for name in ADAPTERS:
        torch.save(adapters(name), folder / f'{name}.pth')
