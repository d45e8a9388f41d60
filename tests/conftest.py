"""Shared fixtures: the parity fixture from ../shared/parity and a tiny random CLIP."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARITY = ROOT.parent / 'shared' / 'parity'

from CLIP import MultiLevelAdaptedCLIP, create_model  # noqa: E402  (needs the path above)
from mvfa.checkpoint import load_adapters  # noqa: E402


def needs_parity() -> None:
    if not (PARITY / 'expected.npz').is_file():
        pytest.skip(f'parity fixture not found at {PARITY} (it lives beside the repo in the team checkout)')


@pytest.fixture(scope='session')
def expected() -> dict:
    needs_parity()
    with np.load(PARITY / 'expected.npz') as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope='session')
def parity_settings() -> dict:
    needs_parity()
    import json
    return json.loads((PARITY / 'settings.json').read_text())


@pytest.fixture(scope='session')
def parity_clip():
    needs_parity()
    return create_model(str(PARITY / 'tiny.json'), 240, str(PARITY / 'tiny_clip_336.pt'))


@pytest.fixture()
def parity_model(parity_clip, parity_settings) -> MultiLevelAdaptedCLIP:
    """The tiny parity CLIP with adapters from adapters_init.pth (fresh for every test)."""
    model = MultiLevelAdaptedCLIP(parity_clip, parity_settings['features'])
    load_adapters(model, PARITY / 'adapters_init.pth')
    return model


@pytest.fixture(scope='session')
def parity_args() -> list:
    """Flags that run the scripts on the parity fixture with the tiny CLIP."""
    needs_parity()
    return ['--model_name', str(PARITY / 'tiny.json'), '--pretrain', str(PARITY / 'tiny_clip_336.pt'),
            '--data_path', str(PARITY / 'data'), '--features_list', '3', '6', '9', '12', '--device', 'cpu']


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as the scripts run (mvfa.runtime.configure_backends)
