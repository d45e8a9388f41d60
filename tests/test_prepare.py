"""python -m dataset.prepare (issue 21): labelled volumes -> BMAD layout, split by volume, then one epoch of
train_few.py and test_few.py on it with the tiny CLIP, and predict.py scoring a volume's slice as its PNG."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

import predict
import test_few
import train_few
from dataset import prepare
from mvfa.runs.cli import run
from scans import FEATURES, SIZE, write_nifti

SHAPE = (32, 32, 8)
# Slices 0 and 7 are empty (left out as background), the lesion is in slices 3 and 4.
TISSUE_SLICES, LESION_SLICES = range(1, 7), (3, 4)
RAS = np.diag([1.0, 1.0, 2.0, 1.0])
LAS = np.diag([-1.0, 1.0, 2.0, 1.0])
VOLUMES = 4


def labelled_volume(seed: int):
    """An MR-like volume (tissue ~100 on zero background) with a bright lesion and its label."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing='ij')
    tissue = (x - 16) ** 2 / 144 + (y - 15) ** 2 / 100 <= 1
    lesion = (x - 12 - seed) ** 2 + (y - 14) ** 2 <= 9
    image = np.zeros(SHAPE, dtype=np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    for z in TISSUE_SLICES:
        image[..., z] = tissue * (100 + 10 * rng.standard_normal(tissue.shape))
    for z in LESION_SLICES:
        image[..., z][lesion] = 300
        label[..., z][lesion] = 1
    return image, label


def write_cases(root: Path) -> Dict[str, Path]:
    images, labels = root / 'images', root / 'labels'
    images.mkdir(parents=True)
    labels.mkdir()
    for case in range(VOLUMES):
        image, label = labelled_volume(case)
        affine = LAS if case % 2 else RAS  # half of them stored left to right
        write_nifti(images / f'case{case}.nii.gz', image, affine)
        write_nifti(labels / f'case{case}.nii.gz', label, affine)
    return {'images': images, 'labels': labels}


def prepare_argv(cases: Dict[str, Path], out: Path) -> list:
    return ['--images', str(cases['images']), '--labels', str(cases['labels']), '--obj', 'Kidney', '--out', str(out),
            '--valid_share', '0.5', '--seed', '3']


@pytest.fixture(scope='module')
def benchmark(tmp_path_factory) -> Dict:
    root = tmp_path_factory.mktemp('prepare')
    cases = write_cases(root)
    target = prepare.main(prepare_argv(cases, root / 'data'))
    return {'root': root, 'cases': cases, 'data': root / 'data', 'target': target}


def test_slices_are_sorted_by_label_and_background(benchmark):
    target = benchmark['target']
    assert target == benchmark['data'] / 'Kidney_AD'
    record = json.loads((target / 'split.json').read_text())
    for volume in record['volumes']:
        assert (volume['normal_slices'], volume['abnormal_slices'], volume['left_out_slices']) == (4, 2, 2)
        assert volume['intensity']['method'] == 'percentile'
    for split in ('valid', 'test'):
        abnormal = sorted(p.name for p in (target / split / 'Ungood' / 'img').iterdir())
        assert abnormal == sorted(p.name for p in (target / split / 'Ungood' / 'anomaly_mask').iterdir())
        assert {name.rsplit('_', 1)[1] for name in abnormal} == {'axial0003.png', 'axial0004.png'}
        normal = {p.name.rsplit('_', 1)[1] for p in (target / split / 'good' / 'img').iterdir()}
        assert normal == {f'axial{z:04d}.png' for z in (1, 2, 5, 6)}
    # A mask is the label of its slice, drawn as the image: 0/255 where label > 0.
    case = benchmark['cases']['images'] / 'case1.nii.gz'
    split = next(v['split'] for v in record['volumes'] if v['volume'] == str(case))
    _, label = labelled_volume(1)
    mask = np.asarray(Image.open(target / split / 'Ungood' / 'anomaly_mask' / 'case1_axial0003.png'))
    # case1 is stored LAS: canonical is the label flipped left-right, then drawn radiologically.
    np.testing.assert_array_equal(mask, (label[::-1, :, 3].T[::-1, ::-1] > 0) * 255)
    assert mask.sum() == 255 * label[..., 3].sum()


def test_no_volume_is_in_two_splits(benchmark):
    target = benchmark['target']
    with open(target / 'split.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(row['volume']).name for row in rows) == [f'case{i}.nii.gz' for i in range(VOLUMES)]
    assert sorted(row['split'] for row in rows) == ['test', 'test', 'valid', 'valid']
    assigned = {Path(row['volume']).name.split('.')[0]: row['split'] for row in rows}
    for split in ('valid', 'test'):
        volumes = {p.name.rsplit('_', 1)[0] for p in (target / split).rglob('*.png')}
        assert volumes == {name for name, where in assigned.items() if where == split}
    assert json.loads((target / 'split.json').read_text())['seed'] == 3


def test_train_and_test_few_shot_on_the_prepared_object(benchmark, tmp_path):
    flags = ['--obj', 'Kidney', '--data_path', str(benchmark['data']), '--model_name', 'tiny-clip', '--pretrain',
             'none', '--img_size', str(SIZE), '--features_list', *FEATURES, '--device', 'cpu', '--shot', '1',
             '--iterate', '-1', '--save_path', str(tmp_path)]
    trained = train_few.main(flags + ['--epoch', '1', '--batch_size', '4'])
    tested = test_few.main(flags + ['--results', str(tmp_path / 'few.json')])
    assert tested.image_auroc == pytest.approx(trained.image_auroc, abs=1e-9)
    assert tested.pixel_auroc == pytest.approx(trained.pixel_auroc, abs=1e-9)
    record = json.loads((tmp_path / 'few.json').read_text())
    assert record['obj'] == 'Kidney' and record['labels'] == [0] * 8 + [1] * 4
    # predict.py scores a volume's slice exactly as the benchmark's PNG of it (same window, same 8 bits).
    volume = benchmark['cases']['images'] / 'case2.nii.gz'
    split = next(row['split'] for row in json.loads((benchmark['target'] / 'split.json').read_text())['volumes']
                 if row['volume'] == str(volume))
    png = benchmark['target'] / split / 'Ungood' / 'img' / 'case2_axial0003.png'
    common = ['--checkpoint', str(tmp_path / 'Kidney.pth'), '--obj', 'Kidney', '--device', 'cpu']
    from_volume = predict.main(common + ['--out', str(tmp_path / 'v'), '--slices', '3:4', str(volume)])
    from_png = predict.main(common + ['--out', str(tmp_path / 'p'), str(png)])
    assert from_volume[0]['score'] == pytest.approx(from_png[0]['score'], abs=1e-6)


def refused(capsys, argv, out: Path, words: str) -> None:
    assert run(prepare.main, argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], lines
    assert not out.exists() or list(out.iterdir()) == []


def test_labels_that_do_not_fit_their_images_are_refused(tmp_path, capsys):
    cases = write_cases(tmp_path)
    out = tmp_path / 'data'
    label = cases['labels'] / 'case2.nii.gz'
    write_nifti(label, np.zeros((32, 30, 8), dtype=np.uint8), RAS)
    refused(capsys, prepare_argv(cases, out), out, 'is 32x30x8 voxels, its image')
    shifted = RAS.copy()
    shifted[2, 3] = 5.0  # 5 mm higher up
    write_nifti(label, labelled_volume(2)[1], shifted)
    refused(capsys, prepare_argv(cases, out), out, 'their affines (canonical orientation) differ by up to 5 mm')
    label.unlink()
    refused(capsys, prepare_argv(cases, out), out, 'has no label volume')


def test_an_existing_benchmark_is_kept(benchmark, capsys):
    before = sorted(benchmark['target'].rglob('*'))
    refused_out = benchmark['data']
    assert run(prepare.main, prepare_argv(benchmark['cases'], refused_out)) == 2
    assert 'Kidney_AD exists' in capsys.readouterr().err
    assert sorted(benchmark['target'].rglob('*')) == before
