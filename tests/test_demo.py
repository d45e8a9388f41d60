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
from dataset.readers import load_image
from dataset.layouts import Record
from mvfa.engine.checkpoint import read_checkpoint
from mvfa.engine.visualize import (BAR_SHARE, GAP, INPUT_TITLE, MAP_TITLE, MASK_TITLE, MIN_BAR, MIN_HEIGHT, NO_MASK_GREY,
                            TEST_SET_SCALE, Drawing, font_scale, heatmap_names, jet, line_height, panel,
                            record_header, save_heatmaps, short_names, to_uint8)

IMG_SIZE = 28
# The demo at the size below, seeds 1-5 and 111: the mean image-AUROC gain of training was 0.106-0.172.
MARGIN = 0.05
N_TEST = 8


@pytest.fixture()
def records(tmp_path) -> list:
    """Two 40x40 test images, a normal one and an abnormal one, named as the synthetic BMAD data names them."""
    rng = np.random.default_rng(0)
    made = []
    for label, name in enumerate(['tg000.png', 'tU003.png']):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
        made.append(Record(tmp_path / name, label, None, name))
    return made


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def expected(record: Record, anomaly_map: np.ndarray, score: float, mask=None, obj: str = 'Brain') -> Drawing:
    """The figure `save_heatmaps` draws for one test image."""
    image = to_uint8(load_image(record.image, IMG_SIZE).permute(1, 2, 0).numpy())
    return panel(image, anomaly_map, TEST_SET_SCALE, record_header(obj, record, score), mask, ground_truth=True)


def region(pixels: np.ndarray, box) -> np.ndarray:
    top, left, height, width = box
    return pixels[top:top + height, left:left + width]


def dark(pixels: np.ndarray) -> int:
    """How many pixels are text-dark (the figures are black text on white)."""
    return int((pixels.max(axis=-1) < 128).sum())


def test_heatmaps_named_sized_and_titled(tmp_path, records):
    maps = np.random.default_rng(1).random((2, IMG_SIZE, IMG_SIZE))
    masks = np.zeros((2, IMG_SIZE, IMG_SIZE), dtype=bool)
    masks[1, 5:15, 5:15] = True
    written = save_heatmaps(tmp_path / 'vis', 'Brain', records, maps, [0.1234, 0.8726], masks, IMG_SIZE)
    assert [p.name for p in written] == ['Brain_good_0.123_tg000.png', 'Brain_Ungood_0.873_tU003.png']
    figures = [expected(r, maps[i], score, masks[i]) for i, (r, score) in enumerate(zip(records, [0.1234, 0.8726]))]
    for path, figure in zip(written, figures):
        np.testing.assert_array_equal(read(path), figure.pixels)
    boxes = figures[1].boxes
    # A 28 px model input is drawn enlarged to MIN_HEIGHT, so its titles read: input | mask | map | bar.
    assert [boxes[t][1:] for t in (INPUT_TITLE, MASK_TITLE, MAP_TITLE)] == [
        (0, MIN_HEIGHT, MIN_HEIGHT), (MIN_HEIGHT + GAP, MIN_HEIGHT, MIN_HEIGHT),
        (2 * (MIN_HEIGHT + GAP), MIN_HEIGHT, MIN_HEIGHT)]
    pixels = read(written[1])
    top, left, _, bar_width = boxes[TEST_SET_SCALE.title]
    assert pixels.shape[1] == left + bar_width and pixels.shape[0] > MIN_HEIGHT + 3 * 10  # header, titles, caption
    # The mask, enlarged by nearest neighbour: its 10x10 square, white on black.
    scale = MIN_HEIGHT / IMG_SIZE
    mask_panel = region(pixels, boxes[MASK_TITLE])[..., 0]
    white = np.argwhere(mask_panel == 255)
    assert white.min(axis=0).tolist() == [round(5 * scale), round(5 * scale)]
    assert np.isin(mask_panel, (0, 255)).all() and len(white) == pytest.approx((10 * scale) ** 2, rel=0.1)
    # The text is drawn: a header that tells the two images apart (name, label, score), a title over each
    # panel, a caption. A header line is a few hundred dark pixels; an empty one would have none.
    header = [region(read(path), figure.boxes['header']) for path, figure in zip(written, figures)]
    assert min(dark(h) for h in header) > 300 and (header[0] != header[1]).any()
    title_height = line_height(font_scale(MIN_HEIGHT))
    for title in (INPUT_TITLE, MASK_TITLE, MAP_TITLE, TEST_SET_SCALE.title):
        panel_top, left, _, width = boxes[title]
        assert dark(pixels[panel_top - title_height:panel_top, left:left + width]) > 30
    assert dark(region(pixels, boxes['caption'])) > 500


def test_heatmap_colour_bar_is_the_scale_of_the_map(tmp_path, records):
    written = save_heatmaps(tmp_path, 'Brain', records, np.zeros((2, IMG_SIZE, IMG_SIZE)), [0.1, 0.9],
                            img_size=IMG_SIZE)
    figure = expected(records[0], np.zeros((IMG_SIZE, IMG_SIZE)), 0.1)
    bar = region(read(written[0]), figure.boxes[TEST_SET_SCALE.title])
    strip = bar[:, 0]
    # JET from red (1, top) to blue (0, bottom), as the overlay colours the map: a gradient of many colours.
    np.testing.assert_array_equal(strip, jet(np.linspace(1.0, 0.0, MIN_HEIGHT))[0])
    assert len(np.unique(strip, axis=0)) > 100
    assert strip[0, 0] > 100 > strip[0, 2] and strip[-1, 2] > 100 > strip[-1, 0]
    # Tick labels right of the strip: dark text on white.
    assert dark(bar[:, 2 * max(MIN_BAR, round(MIN_HEIGHT * BAR_SHARE)):]) > 100
    assert [label for _, label in TEST_SET_SCALE.ticks()] == ['0', '0.25', '0.5', '0.75', '1']


def test_heatmaps_without_masks_say_so(tmp_path, records):
    maps = np.zeros((2, IMG_SIZE, IMG_SIZE))
    written = save_heatmaps(tmp_path, 'Chest', records, maps, [0.0, 1.0], img_size=IMG_SIZE)
    assert written[1].name == 'Chest_Ungood_1.000_tU003.png'
    figure = expected(records[1], maps[1], 1.0, obj='Chest')
    pixels = read(written[1])
    np.testing.assert_array_equal(pixels, figure.pixels)
    no_mask = region(pixels, figure.boxes[MASK_TITLE])
    # A grey panel with the words "no mask" in its middle.
    assert (no_mask == NO_MASK_GREY).all(axis=-1).mean() > 0.9
    middle = no_mask[MIN_HEIGHT // 2 - 20:MIN_HEIGHT // 2 + 20]
    assert dark(middle) > 50 and dark(no_mask) == dark(middle)


def test_heatmaps_follow_the_maps(tmp_path, records):
    low, high = np.zeros((2, IMG_SIZE, IMG_SIZE)), np.ones((2, IMG_SIZE, IMG_SIZE))
    cold = read(save_heatmaps(tmp_path / 'cold', 'Chest', records, low, [0.5, 0.5], img_size=IMG_SIZE)[1])
    hot = read(save_heatmaps(tmp_path / 'hot', 'Chest', records, high, [0.5, 0.5], img_size=IMG_SIZE)[1])
    boxes = expected(records[1], low[1], 0.5, obj='Chest').boxes
    np.testing.assert_array_equal(region(cold, boxes[INPUT_TITLE]), region(hot, boxes[INPUT_TITLE]))
    cold, hot = region(cold, boxes[MAP_TITLE]), region(hot, boxes[MAP_TITLE])
    # JET: blue where the map is 0, red where it is 1.
    assert hot[..., 0].mean() > cold[..., 0].mean() + 50
    assert cold[..., 2].mean() > hot[..., 2].mean() + 50


def test_mvtec_names_keep_defect_folders_apart(tmp_path):
    """Two defects holding the same file name, with the same rounded score, write two files."""
    rng = np.random.default_rng(3)
    names = ['test/good/000.png', 'test/crack/000.png', 'test/scratch/000.png']
    found = []
    for label, name in zip([0, 1, 1], names):
        (tmp_path / 'bottle' / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / 'bottle' / name)
        found.append(Record(tmp_path / 'bottle' / name, label, None, name))
    maps = rng.random((3, IMG_SIZE, IMG_SIZE))
    written = save_heatmaps(tmp_path / 'vis', 'bottle', found, maps, [0.8726, 0.8726, 0.8731], img_size=IMG_SIZE)
    assert [p.name for p in written] == ['bottle_good_0.873_good-000.png', 'bottle_Ungood_0.873_crack-000.png',
                                         'bottle_Ungood_0.873_scratch-000.png']
    assert sorted(p.name for p in (tmp_path / 'vis').iterdir()) == sorted(p.name for p in written)
    for path, record, anomaly_map, score in zip(written, found, maps, [0.8726, 0.8726, 0.8731]):
        np.testing.assert_array_equal(read(path), expected(record, anomaly_map, score, obj='bottle').pixels)


def test_heatmap_names_are_short_and_never_repeat():
    # VisA: the folders every test image shares are left out; BMAD: the file stem.
    assert short_names(['Data/Images/Normal/0001.JPG', 'Data/Images/Anomaly/0001.JPG']) == ['Normal-0001',
                                                                                            'Anomaly-0001']
    assert short_names(['tg000.png', 'tU003.png']) == ['tg000', 'tU003'] and short_names([]) == []
    # Names that still meet (one stem, two suffixes) are numbered.
    records = [Record(Path(name), 1, None, name) for name in ['test/crack/a.png', 'test/crack/a.jpg']]
    assert heatmap_names('bottle', records, [0.5, 0.5]) == ['bottle_Ungood_0.500_a.png', 'bottle_Ungood_0.500_a-1.png']


def test_heatmaps_check_their_input(tmp_path, records):
    with pytest.raises(ValueError, match='one of each'):
        save_heatmaps(tmp_path, 'Chest', records, np.zeros((1, IMG_SIZE, IMG_SIZE)), [0.5], img_size=IMG_SIZE)
    with pytest.raises(ValueError, match='img_size'):
        save_heatmaps(tmp_path, 'Chest', records, np.zeros((2, 56, 56)), [0.5, 0.5], img_size=IMG_SIZE)


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
