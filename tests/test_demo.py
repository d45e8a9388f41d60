"""The demo end to end at a small size, and the heatmaps it writes."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import demo
import train_few
from mvfa.checkpoint import read_checkpoint
from mvfa.visualize import GAP, save_heatmaps

IMG_SIZE = 28
# The demo at the size below, seeds 1-5 and 111: the mean image-AUROC gain of training was 0.106-0.172.
MARGIN = 0.05
N_TEST = 8


@pytest.fixture()
def images(tmp_path) -> list:
    """Two 40x40 test images, a normal one and an abnormal one, named as the synthetic data names them."""
    rng = np.random.default_rng(0)
    paths = [tmp_path / 'tg000.png', tmp_path / 'tU003.png']
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return paths


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def test_heatmaps_named_and_sized(tmp_path, images):
    maps = np.random.default_rng(1).random((2, IMG_SIZE, IMG_SIZE))
    masks = np.zeros((2, IMG_SIZE, IMG_SIZE), dtype=bool)
    masks[1, 5:15, 5:15] = True
    written = save_heatmaps(tmp_path / 'vis', 'Brain', images, maps, [0, 1], [0.1234, 0.8726], masks, IMG_SIZE)
    assert [p.name for p in written] == ['Brain_good_0.123_tg000.png', 'Brain_Ungood_0.873_tU003.png']
    assert all(p.is_file() for p in written)
    # input | mask | overlay
    assert read(written[1]).shape == (IMG_SIZE, 3 * IMG_SIZE + 2 * GAP, 3)
    mask_panel = read(written[1])[:, IMG_SIZE + GAP:2 * IMG_SIZE + GAP, 0]
    assert mask_panel[5:15, 5:15].min() == 255 and mask_panel.sum() == 255 * 100


def test_heatmaps_without_masks_have_two_panels(tmp_path, images):
    maps = np.zeros((2, IMG_SIZE, IMG_SIZE))
    written = save_heatmaps(tmp_path, 'Chest', images, maps, [0, 1], [0.0, 1.0], img_size=IMG_SIZE)
    assert read(written[0]).shape == (IMG_SIZE, 2 * IMG_SIZE + GAP, 3)
    assert written[1].name == 'Chest_Ungood_1.000_tU003.png'


def test_heatmaps_follow_the_maps(tmp_path, images):
    low, high = np.zeros((2, IMG_SIZE, IMG_SIZE)), np.ones((2, IMG_SIZE, IMG_SIZE))
    cold = read(save_heatmaps(tmp_path / 'cold', 'Chest', images, low, [0, 1], [0.5, 0.5], img_size=IMG_SIZE)[1])
    hot = read(save_heatmaps(tmp_path / 'hot', 'Chest', images, high, [0, 1], [0.5, 0.5], img_size=IMG_SIZE)[1])
    np.testing.assert_array_equal(cold[:, :IMG_SIZE], hot[:, :IMG_SIZE])  # the input panel
    overlay = slice(IMG_SIZE + GAP, None)
    # JET: blue where the map is 0, red where it is 1.
    assert hot[:, overlay, 0].mean() > cold[:, overlay, 0].mean() + 50
    assert cold[:, overlay, 2].mean() > hot[:, overlay, 2].mean() + 50


def test_heatmaps_check_their_input(tmp_path, images):
    with pytest.raises(ValueError, match='one of each'):
        save_heatmaps(tmp_path, 'Chest', images, np.zeros((1, IMG_SIZE, IMG_SIZE)), [0], [0.5], img_size=IMG_SIZE)
    with pytest.raises(ValueError, match='img_size'):
        save_heatmaps(tmp_path, 'Chest', images, np.zeros((2, 56, 56)), [0, 1], [0.5, 0.5], img_size=IMG_SIZE)


def test_demo_learns_prints_and_draws(tmp_path, capsys):
    out = tmp_path / 'vis'
    rows = demo.main(['--objects', 'Brain', 'Histopathology', '--epoch', '3', '--size', '32', '--img_size', '56',
                      '--n_test', str(N_TEST), '--data_path', str(tmp_path / 'data'),
                      '--ckpt_path', str(tmp_path / 'ckpt'), '--out', str(out)])
    printed = capsys.readouterr().out
    assert demo.HEADER in printed and 'the learned adapters beat the untrained ones' in printed
    assert re.search(r'^Brain +few-shot +\d\.\d{3} +\d\.\d{3} +\d\.\d{3} +\d\.\d{3}$', printed, re.MULTILINE)
    assert re.search(r'^Histopathology +zero-shot +\d\.\d{3} +- +\d\.\d{3} +-$', printed, re.MULTILINE)
    assert 'python train_few.py --obj Brain --shot 4' in printed

    assert [(r.obj, r.setting) for r in rows] == [('Brain', 'few-shot'), ('Brain', 'zero-shot'),
                                                  ('Histopathology', 'few-shot'), ('Histopathology', 'zero-shot')]
    gain = np.mean([r.trained.image_auroc - r.untrained.image_auroc for r in rows])
    assert gain > MARGIN

    for setting in ('few-shot', 'zero-shot'):
        for obj in ('Brain', 'Histopathology'):
            files = sorted((out / setting).glob(f'{obj}_*.png'))
            assert len(files) == 2 * N_TEST  # good and Ungood
            assert all(re.fullmatch(rf'{obj}_(good|Ungood)_\d\.\d{{3}}_t[gU]\d{{3}}\.png', f.name) for f in files)


def test_untrained_adapters_are_where_training_starts(tmp_path):
    """With a zero learning rate training keeps its starting adapters: the demo's untrained ones."""
    data = tmp_path / 'data'
    demo.prepare_data(data, 32, 2)
    flags = demo.TINY_MODEL + ['--data_path', str(data), '--img_size', '28', '--seed', '5']
    demo.save_untrained_adapters(tmp_path / 'untrained', ['Chest'], flags)
    train_few.main(flags + ['--obj', 'Chest', '--shot', str(demo.SHOT), '--fewshot_seed_dir',
                            str(data / 'fewshot_seed'), '--epoch', '1', '--learning_rate', '0',
                            '--save_path', str(tmp_path / 'trained')])
    untrained, trained = (read_checkpoint(tmp_path / folder / 'Chest.pth') for folder in ('untrained', 'trained'))
    for key in untrained:
        for name, tensor in untrained[key].items():
            assert torch.equal(tensor, trained[key][name]), f'{key}.{name}'
