"""Shared fixtures: the parity fixture of tests/parity and a tiny random CLIP."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import parity  # noqa: E402  (tests/parity, beside this file)
from CLIP import MultiLevelAdaptedCLIP, create_model  # noqa: E402  (needs the path above)
from mvfa.engine.checkpoint import load_adapters  # noqa: E402

PARITY = parity.FOLDER


@pytest.fixture(scope='session')
def expected() -> dict:
    return parity.expected()


@pytest.fixture(scope='session')
def parity_settings() -> dict:
    return json.loads((PARITY / 'settings.json').read_text())


@pytest.fixture(scope='session')
def parity_files(tmp_path_factory) -> Path:
    """A folder with the reference's weight files, tiny_clip_336.pt and adapters_*.pth, rebuilt from the fixture:
    the scripts and `create_model` read real files (the CLIP's at 336 px, so loading it resizes)."""
    folder = tmp_path_factory.mktemp('parity')
    parity.write_weights(folder)
    return folder


@pytest.fixture(scope='session')
def parity_clip(parity_files):
    return create_model(str(PARITY / 'tiny.json'), 240, str(parity_files / 'tiny_clip_336.pt'))


@pytest.fixture()
def parity_model(parity_clip, parity_settings, parity_files) -> MultiLevelAdaptedCLIP:
    """The tiny parity CLIP with adapters from adapters_init.pth (fresh for every test)."""
    model = MultiLevelAdaptedCLIP(parity_clip, parity_settings['features'])
    load_adapters(model, parity_files / 'adapters_init.pth')
    return model


@pytest.fixture(scope='session')
def parity_args(parity_files) -> list:
    """Flags that run the scripts on the parity fixture with the tiny CLIP."""
    return ['--model_name', str(PARITY / 'tiny.json'), '--pretrain', str(parity_files / 'tiny_clip_336.pt'),
            '--data_path', str(PARITY / 'data'), '--features_list', '3', '6', '9', '12', '--device', 'cpu']


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as the scripts run (mvfa.engine.runtime.configure_backends)
