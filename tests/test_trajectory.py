"""One training trajectory whatever --selection is: scoring the model during training draws no random
number, so the adapters after the last step are the same with every selection mode (issue 14)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch

import train_few
import train_zero
from dataset.synthetic import generate
from mvfa.engine import session
from mvfa.common.config import SELECTION_MODES


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=2, n_valid=3, shots=(1,), iterations=1)


def final_adapters(script, argv: List[str], monkeypatch) -> Dict[str, torch.Tensor]:
    """The adapters as the last training step left them (before the selected state is restored)."""
    final = {}
    real_finish = session.finish_training

    def finish(args, setting, selection, model, *rest):
        final.update({name: tensor.clone() for name, tensor in model.state_dict().items() if 'adapters' in name})
        return real_finish(args, setting, selection, model, *rest)
    monkeypatch.setattr(session, 'finish_training', finish)
    script.main(argv)
    assert final
    return final


@pytest.mark.parametrize('script', [train_few, train_zero])
def test_every_selection_mode_trains_the_same_adapters(script, data, tmp_path, monkeypatch):
    argv = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
            '--device', 'cpu', '--img_size', '28', '--data_path', str(data), '--obj', 'Liver', '--epoch', '2',
            '--save_model', '0']
    if script is train_few:
        argv += ['--fewshot_seed_dir', str(data / 'fewshot_seed'), '--shot', '1', '--iterate', '0']
    trained = {mode: final_adapters(script, argv + ['--selection', mode, '--save_path', str(tmp_path / mode)],
                              monkeypatch) for mode in SELECTION_MODES}
    last = trained['last']
    for mode in SELECTION_MODES:
        assert set(trained[mode]) == set(last)
        for name, tensor in last.items():
            assert torch.equal(trained[mode][name], tensor), (mode, name)
