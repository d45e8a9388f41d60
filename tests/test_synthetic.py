"""The synthetic BMAD generator: layout, content, determinism, seed lists, CLI."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from dataset.objects import OBJECTS, OBJECTS_WITH_MASKS
from dataset.synthetic import generate, main

N_TEST, N_VALID, SIZE, SHOTS, ITERATIONS = 4, 3, 48, (1, 2, 4), 2


@pytest.fixture(scope='module')
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp('synthetic'), seed=0, size=SIZE, n_test=N_TEST, n_valid=N_VALID,
                    shots=SHOTS, iterations=ITERATIONS)


def _pngs(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.glob('*.png'))


def _tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=float)


@pytest.mark.parametrize('obj', OBJECTS)
def test_layout_counts_modes_and_sizes(data: Path, obj: str) -> None:
    root = data / f'{obj}_AD'
    for split, count, prefix in (('test', N_TEST, 't'), ('valid', N_VALID, 'v')):
        for cls in ('good', 'Ungood'):
            names = _pngs(root / split / cls / 'img')
            assert names == [f'{prefix}{cls[0]}{i:03d}.png' for i in range(count)]
            for name in names:
                with Image.open(root / split / cls / 'img' / name) as im:
                    assert im.mode == ('RGB' if obj == 'Histopathology' else 'L')
                    assert im.size == (SIZE, SIZE)
            masks = root / split / cls / 'anomaly_mask'
            assert masks.is_dir() == (cls == 'Ungood' and obj in OBJECTS_WITH_MASKS)
            if masks.is_dir():
                assert _pngs(masks) == names
    assert {p.name for p in root.iterdir()} == {'test', 'valid'}


@pytest.mark.parametrize('obj', OBJECTS_WITH_MASKS)
def test_masks_binary_nonempty_and_mark_a_visible_lesion(data: Path, obj: str) -> None:
    split = data / f'{obj}_AD' / 'test'
    goods = np.stack([_load(p) for p in sorted((split / 'good' / 'img').glob('*.png'))])
    for path in sorted((split / 'Ungood' / 'img').glob('*.png')):
        with Image.open(split / 'Ungood' / 'anomaly_mask' / path.name) as m:
            assert m.mode == 'L' and m.size == (SIZE, SIZE)
            mask = np.asarray(m)
        assert set(np.unique(mask)) <= {0, 255}
        lesion = mask == 255
        assert lesion.mean() > 0.01
        # The lesion pixels look unlike the same pixels of normal images.
        gap = np.abs(_load(path)[lesion][None] - goods[:, lesion]).mean()
        assert gap > 40, f'{obj} {path.name}: lesion differs from normal tissue by only {gap:.1f} grey levels'


@pytest.mark.parametrize('obj', ['Retina_OCT2017', 'Chest', 'Histopathology'])
def test_image_level_objects_differ_between_classes(data: Path, obj: str) -> None:
    split = data / f'{obj}_AD' / 'test'
    def spread(cls: str) -> float:
        # Mean over images of the per-pixel deviation from the class-agnostic median image.
        return float(np.mean([np.abs(_load(p) - median).mean() for p in (split / cls / 'img').glob('*.png')]))
    median = np.median(np.stack([_load(p) for p in split.glob('*/img/*.png')]), axis=0)
    assert spread('Ungood') > spread('good')


def test_seed_lists_parse_and_name_valid_images(data: Path) -> None:
    for obj in OBJECTS:
        valid = data / f'{obj}_AD' / 'valid'
        files = {'a': set(_pngs(valid / 'Ungood' / 'img')), 'n': set(_pngs(valid / 'good' / 'img'))}
        expected_shots = {k for k in SHOTS if k <= N_VALID}
        listed = {int(p.name.split('-')[0]) for p in (data / 'fewshot_seed' / obj).glob('*-shot.txt')}
        assert listed == expected_shots
        for k in expected_shots:
            lines = (data / 'fewshot_seed' / obj / f'{k}-shot.txt').read_text(encoding='utf-8').splitlines()
            tags = [f'{kind}-{i}:' for i in range(ITERATIONS) for kind in 'an']
            assert [line.split()[0] for line in lines] == tags
            for line in lines:
                tag, *names = line.split()
                assert len(names) == k == len(set(names))
                assert set(names) <= files[tag[0]]


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    kwargs = dict(size=32, n_test=2, n_valid=2, shots=(1, 2), iterations=2, objects=('Brain', 'Histopathology'))
    first = _tree(generate(tmp_path / 'a', seed=3, **kwargs))
    assert first == _tree(generate(tmp_path / 'b', seed=3, **kwargs))
    other = _tree(generate(tmp_path / 'c', seed=4, **kwargs))
    assert first.keys() == other.keys()
    images = [name for name in first if name.endswith('.png')]
    assert all(first[name] != other[name] for name in images)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'demo'
    main(['--out', str(out), '--seed', '1', '--size', '40', '--n_test', '2', '--n_valid', '2',
          '--shots', '1', '2', '--iterations', '1', '--objects', 'Liver', 'Chest'])
    assert sorted(p.name for p in out.iterdir()) == ['Chest_AD', 'Liver_AD', 'fewshot_seed']
    assert len(list(out.rglob('img/*.png'))) == 2 * 2 * (2 + 2)
    assert len(list(out.rglob('anomaly_mask/*.png'))) == 2 + 2
    assert sorted(p.name for p in (out / 'fewshot_seed' / 'Liver').iterdir()) == ['1-shot.txt', '2-shot.txt']
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and str(out) in printed[0] and '16' in printed[0]


def test_size_240_and_bad_arguments(tmp_path: Path) -> None:
    out = generate(tmp_path, size=240, n_test=1, n_valid=1, shots=(1,), iterations=1, objects=('Retina_RESC',))
    with Image.open(out / 'Retina_RESC_AD' / 'test' / 'Ungood' / 'anomaly_mask' / 'tU000.png') as m:
        assert m.size == (240, 240) and np.asarray(m).any()
    with pytest.raises(ValueError):
        generate(tmp_path, objects=('Knee',))


# ---------------------------------------------------------------- MVTec AD and VisA layouts

def test_mvtec_and_visa_layouts_are_deterministic_and_complete(tmp_path: Path) -> None:
    from dataset.synthetic import CATEGORIES, DEFECTS, generate_mvtec, generate_visa
    mvtec = _tree(generate_mvtec(tmp_path / 'm1', seed=2, size=32, n_train=2, n_test=3))
    assert mvtec == _tree(generate_mvtec(tmp_path / 'm2', seed=2, size=32, n_train=2, n_test=3))
    category = 'brain_mri'
    assert sorted(name for name in mvtec if name.startswith(category)) == sorted(
        [f'{category}/train/good/{i:03d}.png' for i in range(2)] + [f'{category}/test/good/{i:03d}.png' for i in range(3)]
        + [f'{category}/test/{DEFECTS[0]}/{i:03d}.png' for i in range(2)] + [f'{category}/test/{DEFECTS[1]}/000.png']
        + [f'{category}/ground_truth/{DEFECTS[0]}/{i:03d}_mask.png' for i in range(2)]
        + [f'{category}/ground_truth/{DEFECTS[1]}/000_mask.png'])
    assert {name.split('/')[0] for name in mvtec} == set(CATEGORIES)
    visa = _tree(generate_visa(tmp_path / 'v1', seed=2, size=32, n_train=2, n_test=3))
    assert visa == _tree(generate_visa(tmp_path / 'v2', seed=2, size=32, n_train=2, n_test=3))
    rows = visa['split_csv/1cls.csv'].decode().splitlines()
    assert rows[0] == 'object,split,label,image,mask' and len(rows) == 1 + len(CATEGORIES) * (2 + 3 + 3)
    assert rows[1] == f'{CATEGORIES[0]},train,normal,{CATEGORIES[0]}/Data/Images/Normal/0000.JPG,'
    assert rows[-1] == (f'{CATEGORIES[-1]},test,anomaly,{CATEGORIES[-1]}/Data/Images/Anomaly/002.JPG,'
                        f'{CATEGORIES[-1]}/Data/Masks/Anomaly/002.png')
    with pytest.raises(ValueError):
        generate_mvtec(tmp_path / 'm3', n_test=1)  # fewer anomalies than defect folders


def test_cli_layouts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(['--layout', 'mvtec', '--out', str(tmp_path / 'mvtec'), '--size', '24', '--n_train', '1', '--n_test', '2'])
    assert len(list((tmp_path / 'mvtec').rglob('*.png'))) == 3 * (1 + 2 + 2 + 2)  # images and masks
    main(['--layout', 'visa', '--out', str(tmp_path / 'visa'), '--size', '24', '--n_train', '1', '--n_test', '2'])
    assert len(list((tmp_path / 'visa').rglob('*.JPG'))) == 3 * (1 + 2 + 2)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith('wrote 15 synthetic 24x24 images of 3 categories (mvtec layout')
