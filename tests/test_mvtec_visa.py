"""MVTec AD and VisA layouts: what is read, the in-domain few-shot and zero-shot protocol, the scripts and
reproduce.py on synthetic data in both layouts, and one-line errors."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

import reproduce
from mvfa.studies import reproduction
from mvfa.studies import plan as run_plan
import test_few
import test_zero
import train_few
import train_zero
from dataset.readers import DataError, MedTestDataset, ValidationSet, load_mask
from dataset.layouts import BMAD, MVTecAD, VisA, detect_layout
from dataset.medical_few import MedDataset
from dataset.medical_zero import MedTrainDataset
from dataset.synthetic import CATEGORIES, DEFECTS, generate_mvtec, generate_visa
from dataset.validate import validate_leave_one_out, validate_object
import mvfa.engine.session
from mvfa.studies import studies
from mvfa.runs.cli import run
from prompt import prompt_name

N_TRAIN, N_TEST, SIZE = 4, 4, 32
TARGET = 'liver_ct1'
TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
        '--device', 'cpu', '--img_size', '28']


@pytest.fixture(scope='module')
def mvtec(tmp_path_factory) -> Path:
    return generate_mvtec(tmp_path_factory.mktemp('mvtec'), size=SIZE, n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope='module')
def visa(tmp_path_factory) -> Path:
    return generate_visa(tmp_path_factory.mktemp('visa'), size=SIZE, n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(params=['mvtec', 'visa'])
def data(request, mvtec, visa) -> Path:
    return {'mvtec': mvtec, 'visa': visa}[request.param]


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- what is read

def test_mvtec_test_set_is_exactly_what_the_generator_wrote(mvtec):
    data = MedTestDataset(mvtec, TARGET, SIZE)
    category = mvtec / TARGET
    good = sorted((category / 'test' / 'good').glob('*.png'))
    anomalies = [p for defect in DEFECTS for p in sorted((category / 'test' / defect).glob('*.png'))]
    assert len(good) == N_TEST and len(anomalies) == N_TEST
    assert data.images == good + anomalies
    assert data.labels == [0] * N_TEST + [1] * N_TEST
    assert data.masks == [None] * N_TEST + [category / 'ground_truth' / p.parent.name / f'{p.stem}_mask.png'
                                            for p in anomalies]
    assert data.has_masks and isinstance(data.layout, MVTecAD)
    # The defect folders share file names; the names seed lists use keep them apart.
    assert [r.name for r in data.records[N_TEST:N_TEST + 2]] == [f'test/{DEFECTS[0]}/000.png', f'test/{DEFECTS[0]}/001.png']
    _, label, mask = data[N_TEST]
    stored = np.asarray(Image.open(data.masks[N_TEST])) > 0
    assert label == 1 and mask.sum() > 0
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), stored)  # same size: nearest resize is exact


def test_visa_csv_gives_its_splits(visa):
    layout = detect_layout(visa)
    assert isinstance(layout, VisA) and layout.categories() == tuple(sorted(CATEGORIES))
    normal_folder = visa / TARGET / 'Data' / 'Images' / 'Normal'
    # The generator numbers normal images across splits: the first N_TRAIN are in train, the rest in test.
    assert [r.image for r in layout.support_pool(TARGET, 0)] == [normal_folder / f'{i:04d}.JPG' for i in range(N_TRAIN)]
    test = layout.test_records(TARGET)
    assert [r.image for r in test[:N_TEST]] == [normal_folder / f'{i:04d}.JPG' for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    assert [r.label for r in test] == [0] * N_TEST + [1] * N_TEST
    assert [r.mask for r in test[N_TEST:]] == [visa / TARGET / 'Data' / 'Masks' / 'Anomaly' / f'{i:03d}.png'
                                               for i in range(N_TEST)]
    assert test[N_TEST].name == 'Data/Images/Anomaly/000.JPG'
    # VisA-style masks hold labels 0/1, not 0/255: every positive pixel is abnormal.
    raw = np.asarray(Image.open(test[N_TEST].mask))
    assert raw.max() == 1
    np.testing.assert_array_equal(load_mask(test[N_TEST].mask, SIZE)[0].numpy(), (raw > 0).astype(np.float32))


def test_detection_and_checks(tmp_path, mvtec, visa):
    assert isinstance(detect_layout(tmp_path / 'nowhere'), BMAD)
    (tmp_path / 'Brain_AD').mkdir()
    assert isinstance(detect_layout(tmp_path), BMAD)
    raw = tmp_path / 'raw_visa'
    shutil.copytree(visa / TARGET, raw / TARGET)
    with pytest.raises(DataError, match='VisA without split_csv/1cls.csv'):
        detect_layout(raw)
    # The counts: test images and masks; with a shot the training images too (abnormal support is in the test set).
    assert validate_object(mvtec, TARGET, SIZE) == 3 * N_TEST
    assert validate_object(mvtec, TARGET, SIZE, shot=2) == 3 * N_TEST + N_TRAIN
    assert validate_object(visa, TARGET, SIZE, shot=2, normal_only=True) == 3 * N_TEST + N_TRAIN
    assert validate_leave_one_out(visa, TARGET) == 3 * 3 * N_TEST


def test_a_missing_mvtec_mask_is_named(mvtec, tmp_path):
    copy = Path(shutil.copytree(mvtec, tmp_path / 'data'))
    victim = copy / TARGET / 'ground_truth' / DEFECTS[1] / '000_mask.png'
    victim.unlink()
    with pytest.raises(DataError, match=f'expected {victim}'):
        validate_object(copy, TARGET)


def test_prompt_names_of_categories():
    assert [prompt_name(n) for n in ('metal_nut', 'pcb1', 'macaroni2', 'pipe_fryum', 'carpet')] == \
        ['metal nut', 'pcb', 'macaroni', 'pipe fryum', 'carpet']
    assert [prompt_name(n) for n in ('Chest', 'brain MRI', 'T2')] == ['Chest X-ray film', 'brain MRI', 'T2']


# ---------------------------------------------------------------- the in-domain protocol

def test_few_shot_support_leaves_the_test_set(data):
    full = MedTestDataset(data, TARGET, SIZE)
    few = MedDataset(data, TARGET, SIZE, shot=2, iterate=-1)
    normal_support, abnormal_support = few.support_images[:2], few.support_images[2:]
    train_pool = [r.image for r in few.layout.support_pool(TARGET, 0)]
    assert set(normal_support) <= set(train_pool) and not set(normal_support) & set(full.images)
    assert set(abnormal_support) <= {image for image, label in zip(full.images, full.labels) if label}
    assert len(few) == 2 * N_TEST - 2 and not set(abnormal_support) & set(few.images)
    assert sorted(few.images + abnormal_support) == sorted(full.images)
    assert few.labels == [0] * N_TEST + [1] * (N_TEST - 2)
    assert few.fewshot_abnorm_mask.shape == (2, 1, SIZE, SIZE) and bool((few.fewshot_abnorm_mask.sum((1, 2, 3)) > 0).all())
    normal_only = MedDataset(data, TARGET, SIZE, shot=2, iterate=-1, normal_only=True)
    assert len(normal_only) == 2 * N_TEST and normal_only.fewshot_abnorm_img is None


def test_seed_lists_name_mvtec_images_by_their_path(mvtec, tmp_path):
    seeds = tmp_path / 'seeds'
    (seeds / TARGET).mkdir(parents=True)
    (seeds / TARGET / '1-shot.txt').write_text(f'a-0: test/{DEFECTS[1]}/000.png\nn-0: train/good/002.png\n'
                                               f'a-1: test/{DEFECTS[0]}/007.png\nn-1: train/good/000.png\n')
    few = MedDataset(mvtec, TARGET, SIZE, shot=1, iterate=0, seed_dir=seeds)
    assert few.support_images == [mvtec / TARGET / 'train' / 'good' / '002.png',
                                  mvtec / TARGET / 'test' / DEFECTS[1] / '000.png']
    assert mvtec / TARGET / 'test' / DEFECTS[0] / '000.png' in few.images  # same file name, other defect: kept
    with pytest.raises(DataError, match=f'names images missing from .*: test/{DEFECTS[0]}/007.png'):
        validate_object(mvtec, TARGET, shot=1, iterate=1, seed_dir=seeds)


def test_zero_shot_trains_on_the_other_categories(data):
    train = MedTrainDataset(data, TARGET, SIZE)
    assert train.sources == [c for c in sorted(CATEGORIES) if c != TARGET]
    assert len(train) == 2 * (2 * N_TEST)


def test_no_validation_split(data):
    with pytest.raises(DataError, match='has no validation split: use --selection test or --selection last'):
        ValidationSet(data, TARGET, SIZE)


# ---------------------------------------------------------------- the scripts

def flags(data: Path, save: Path, *extra: str) -> List[str]:
    return TINY + ['--data_path', str(data), '--save_path', str(save), *extra]


def test_train_few_and_test_few_on_an_mvtec_category(mvtec, tmp_path):
    argv = flags(mvtec, tmp_path / 'ckpt', '--obj', TARGET, '--shot', '2', '--iterate', '-1')
    trained = train_few.main(argv + ['--epoch', '1', '--batch_size', '64', '--results', str(tmp_path / 'train.json')])
    tested = test_few.main(argv + ['--results', str(tmp_path / 'test.json'), '--save_vis', str(tmp_path / 'vis')])
    # One heatmap per test image, named by its defect folder and file, as the defects share file names.
    drawn = sorted(path.name for path in (tmp_path / 'vis').iterdir())
    assert len(drawn) == 2 * N_TEST - 2
    assert all(re.fullmatch(rf'{TARGET}_(good|Ungood)_\d\.\d{{3}}_(good|{"|".join(DEFECTS)})-\d{{3}}\.png', name)
               for name in drawn)
    for name, result in (('train.json', trained), ('test.json', tested)):
        record = json.loads((tmp_path / name).read_text())
        assert len(record['image_scores']) == len(record['images']) == 2 * N_TEST - 2
        assert record['labels'] == [0] * N_TEST + [1] * (N_TEST - 2)
        assert record['pixel_auroc'] is not None and len(record['support_images']) == 4
        assert not set(record['support_images']) & set(record['images'])
    assert tested.image_auroc == pytest.approx(trained.image_auroc, abs=1e-9)


def test_train_zero_and_test_zero_on_a_visa_category(visa, tmp_path):
    argv = flags(visa, tmp_path / 'ckpt', '--obj', TARGET)
    trained = train_zero.main(argv + ['--epoch', '1', '--batch_size', '8', '--selection', 'last'])
    tested = test_zero.main(argv + ['--results', str(tmp_path / 'zero.json')])
    record = json.loads((tmp_path / 'zero.json').read_text())
    assert len(record['image_scores']) == 2 * N_TEST and record['pixel_auroc'] is not None
    assert tested.image_auroc == pytest.approx(trained.image_auroc, abs=1e-9)


@pytest.mark.parametrize('script', [test_zero, train_few])
def test_unknown_category_is_one_line_listing_those_found(script, mvtec, tmp_path, capsys):
    assert run(script.main, flags(mvtec, tmp_path / 'ckpt', '--obj', 'bottle')) == 2
    line = error_line(capsys)
    assert line == (f"error: unknown --obj 'bottle': the MVTec AD data under {mvtec} has "
                    f"{', '.join(sorted(CATEGORIES))}")
    assert not (tmp_path / 'ckpt').exists()


@pytest.mark.parametrize('script', [train_few, train_zero])
def test_selection_valid_is_one_line_before_the_model_is_built(script, visa, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the model was built before the data was checked')
    monkeypatch.setattr(mvfa.engine.session, 'create_model', refuse)
    argv = flags(visa, tmp_path / 'ckpt', '--obj', TARGET, '--epoch', '1', '--selection', 'valid')
    if script is train_few:
        argv += ['--shot', '1', '--iterate', '-1']
    assert run(script.main, argv) == 2
    assert 'VisA has no validation split: use --selection test or --selection last' in error_line(capsys)


def test_reproduce_on_mvtec_categories(mvtec, tmp_path):
    argv = TINY + ['--data_path', str(mvtec), '--results_dir', str(tmp_path / 'results'),
                   '--ckpt_dir', str(tmp_path / 'ckpt'), '--epoch', '1', '--batch_size', '64',
                   '--settings', 'few-shot', '--shots', '1', '--random_draws', '1']
    assert [task.obj for task in run_plan.plan(reproduction.parse_args(argv + ['--obj', 'all']))] == sorted(CATEGORIES)
    rows = reproduce.main(argv + ['--obj', TARGET])
    assert [row['object'] for row in rows] == [TARGET, 'Average']
    assert rows[0]['image_auroc_paper'] is None and rows[0]['image_auroc_mean'] is not None
    markdown = (tmp_path / 'results' / 'summary.md').read_text()
    assert '## Few-shot, k = 1 (no published numbers)' in markdown
    assert f'| {TARGET} | test | 1 | ' in markdown and '| – | – | – |' in markdown


@pytest.mark.parametrize('study', ['tsne', 'level_maps'])
def test_figure_studies_show_every_category_outside_bmad(study, mvtec, tmp_path):
    """Catches: the figures' BMAD objects (Retina_RESC; Brain, Liver, Retina_RESC) planned for --obj all on a
    data set that has none of them."""
    argv = ['--study', study, '--data_path', str(mvtec), '--results_dir', str(tmp_path)]
    variant, = studies.figure_variants(reproduction.parse_args(argv))
    assert [task.obj for task in run_plan.plan(variant.args)] == sorted(CATEGORIES)


def test_reproduce_refuses_unknown_categories_and_selection_valid(mvtec, tmp_path, capsys):
    base = TINY + ['--data_path', str(mvtec), '--results_dir', str(tmp_path / 'results')]
    assert run(reproduce.main, base + ['--obj', 'bottle']) == 2
    assert "unknown --obj 'bottle'" in error_line(capsys)
    assert run(reproduce.main, base + ['--obj', TARGET, '--selection', 'valid']) == 2
    assert 'MVTec AD has no validation split' in error_line(capsys)
    assert not (tmp_path / 'results').exists()


def test_reproduce_refuses_iterates_that_would_repeat_one_draw(mvtec, tmp_path, capsys):
    argv = TINY + ['--data_path', str(mvtec), '--results_dir', str(tmp_path / 'results'), '--obj', TARGET,
                   '--settings', 'few-shot', '--shots', '2', '--iterates', '0', '1']
    assert run(reproduce.main, argv) == 2
    assert '--iterates 0 1 would repeat one random draw; use --random_draws N' in error_line(capsys)
