"""Build this fixture from a full parity folder (the reference's outputs), or check it against one.

    python tests/parity/pack.py /path/to/parity            # write arrays.npz.xz and copy data, seeds, configs
    python tests/parity/pack.py /path/to/parity --check    # only verify that the fixture equals the folder

Either way it then verifies: every array, weight and file equal to the original bit for bit, except
the token embedding rows no prompt uses, and the tiny CLIP's text and image outputs equal to the
original's bit for bit.
"""
from __future__ import annotations

import argparse
import filecmp
import io
import json
import lzma
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity  # noqa: E402  (needs the path above)

COPIED = ('tiny.json', 'settings.json', 'prompts.json', 'data', 'fewshot_seed')
# The checkpoint each trained one started from (parity/README.md): their difference is small.
STARTED_FROM = {'adapters_after_train_few_Brain': 'adapters_init', 'adapters_trained': 'adapters_after_train_few_Brain',
                'adapters_after_train_zero': 'adapters_init'}


def sentences(prompts: dict) -> List[str]:
    """Every sentence the reference's prompt ensemble encodes, for all six objects."""
    return [template.format(state.format(name)) for name in prompts['real_name'].values()
            for state in prompts['state_normal'] + prompts['state_abnormal'] for template in prompts['templates']]


def fixture_arrays(full: Path) -> Dict[str, np.ndarray]:
    """What `parity.arrays()` must give for the full folder: all its arrays, under the keys that names,
    with the token embedding cut to the rows the prompts tokenize to (start, end and padding included)."""
    arrays = {}
    with np.load(full / 'expected.npz') as data:
        arrays.update({f'expected/{key}': data[key] for key in data.files})
    rows = np.unique(open_clip.tokenize(sentences(json.loads((full / 'prompts.json').read_text()))).numpy())
    for key, value in torch.load(full / f'{parity.CLIP_WEIGHTS}.pt', weights_only=True).items():
        arrays[f'{parity.CLIP_WEIGHTS}/{key}'] = value.numpy()[rows] if key == parity.TOKEN_EMBEDDING else value.numpy()
        if key == parity.TOKEN_EMBEDDING:
            arrays[f'{parity.CLIP_WEIGHTS}/{parity.TOKEN_ROWS}'] = rows
    for name in parity.ADAPTERS:
        checkpoint = torch.load(full / f'{name}.pth', weights_only=True)
        arrays.update({f'{name}/{key}/{param}': value.numpy()
                       for key in parity.ADAPTER_KEYS for param, value in checkpoint[key].items()})
    return arrays


def planes(bits: np.ndarray, order: int) -> np.ndarray:
    """The 4 byte planes (4, n) of `bits` after `order` differences."""
    for _ in range(order):
        bits = np.diff(bits, prepend=np.uint32(0))  # wraps around; parity.decode sums back
    return np.ascontiguousarray(bits.astype('<u4').view(np.uint8).reshape(-1, 4).T)


def encode(arrays: Dict[str, np.ndarray]) -> bytes:
    """What `parity.decode` reads: see the docstring of `parity`. Only float32 arrays are coded."""
    stored, layout = {}, {}
    for key, value in arrays.items():
        if value.dtype != np.float32:
            stored[key] = value
            continue
        # Bit patterns, not values: np.unique would merge 0.0 and -0.0.
        palette, indices = np.unique(value.view(np.uint32), return_inverse=True)
        if len(palette) <= 256:
            stored[key], layout[key] = indices.reshape(value.shape).astype(np.uint8), {'palette': palette.tolist()}
            continue
        name = key.split('/')[0]
        base = key.replace(name, STARTED_FROM[name], 1) if name in STARTED_FROM else None
        bits = value.view(np.uint32).ravel() - (arrays[base].view(np.uint32).ravel() if base else np.uint32(0))
        order = min(range(3), key=lambda o: len(lzma.compress(planes(bits, o).tobytes(), preset=6)))
        stored[key], layout[key] = planes(bits, order), {'shape': list(value.shape), 'order': order, 'base': base}
    buffer = io.BytesIO()
    np.savez(buffer, layout=np.array(json.dumps(layout)), **stored)
    return lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def copied_files(folder: Path) -> List[Path]:
    """The files of `folder` this fixture copies as they are, relative to it."""
    return sorted(path.relative_to(folder) for name in COPIED for path in [folder / name, *(folder / name).rglob('*')]
                  if path.is_file())


def check_files(full: Path) -> None:
    assert copied_files(parity.FOLDER) == copied_files(full), 'files differ'
    assert all(filecmp.cmp(full / path, parity.FOLDER / path, shallow=False) for path in copied_files(full))


def check_model(full: Path, prompts: dict) -> None:
    """The rebuilt weights give the original's text features for every sentence and its image outputs."""
    config = json.loads((full / 'tiny.json').read_text())
    original, rebuilt = open_clip.model.CLIP(**config), open_clip.model.CLIP(**config)
    original.load_state_dict(torch.load(full / f'{parity.CLIP_WEIGHTS}.pt', weights_only=True))
    rebuilt.load_state_dict(parity.clip_state_dict())
    tokens = open_clip.tokenize(sentences(prompts))
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original.encode_text(tokens), rebuilt.encode_text(tokens))
        assert torch.equal(original.encode_image(images), rebuilt.encode_image(images))


def check(full: Path) -> None:
    arrays, ours = fixture_arrays(full), parity.arrays()
    assert list(ours) == list(arrays), 'keys differ'
    assert all(same(ours[key], value) for key, value in arrays.items()), 'values differ'
    check_files(full)
    check_model(full, json.loads((full / 'prompts.json').read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('full', type=Path, help='a full parity folder (expected.npz, tiny_clip_336.pt, ...)')
    parser.add_argument('--check', action='store_true', help='only verify the fixture against it')
    args = parser.parse_args()
    if not args.check:
        parity.ARRAYS.write_bytes(encode(fixture_arrays(args.full)))
        for name in COPIED:
            shutil.rmtree(parity.FOLDER / name, ignore_errors=True)
        for path in copied_files(args.full):
            (parity.FOLDER / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.full / path, parity.FOLDER / path)  # contents only: the original may be read-only
    check(args.full)
    print(f'{parity.ARRAYS.name} ({parity.ARRAYS.stat().st_size / 2**20:.1f} MiB) equals {args.full}')


if __name__ == '__main__':
    main()
