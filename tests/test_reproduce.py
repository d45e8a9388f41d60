"""reproduce.py end to end on synthetic data with the tiny random CLIP: the runs, their files, the table."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import reproduce
from mvfa.studies import reproduction
from mvfa.studies import plan as run_plan
from mvfa.studies import tables as summary_tables
import test_few
from dataset.medical_few import MedDataset
from dataset.synthetic import generate
from mvfa.method.metrics import average_precision, f1_max
from mvfa.studies.paper_results import published
from dataset.readers import ValidationSet

IMG_SIZE = 56
N_VALID = 4  # per class: 2-shot leaves 2 of each for --selection valid
TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
        '--img_size', str(IMG_SIZE), '--epoch', '1', '--batch_size', '64', '--device', 'cpu']
# One object with masks, one without; zero-shot trains on the other four as well.
OBJECTS = ('Brain', 'Chest')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=3, n_valid=N_VALID, shots=(2,), iterations=2)


def flags(data, folder, *extra: str) -> list:
    return TINY + ['--data_path', str(data), '--fewshot_seed_dir', str(data / 'fewshot_seed'),
                   '--results_dir', str(folder / 'results'), '--ckpt_dir', str(folder / 'ckpt'), *extra]


@pytest.fixture(scope='module')
def tables(data, tmp_path_factory):
    """Zero-shot and 2-shot (two seed-list draws) for Brain and Chest, each run keeping its last epoch."""
    folder = tmp_path_factory.mktemp('tables')
    reproduce.main(flags(data, folder, '--obj', *OBJECTS, '--shots', '2', '--iterates', '0', '1',
                         '--selection', 'last'))
    results = folder / 'results'
    with open(results / 'summary.csv', encoding='utf-8') as handle:
        rows = list(csv.DictReader(handle))
    return {'folder': folder, 'results': results, 'rows': rows, 'data': data,
            'markdown': (results / 'summary.md').read_text(encoding='utf-8')}


def run_record(results, setting: str, obj: str, shot: int, draw: str) -> dict:
    return json.loads((results / setting / f'{obj}_{shot}shot_{draw}.json').read_text(encoding='utf-8'))


def csv_row(rows, setting: str, obj: str) -> dict:
    return next(row for row in rows if row['setting'] == setting and row['object'] == obj)


def number(text: str):
    return None if text == '' else float(text)


def test_plan_covers_every_object_shot_and_draw_in_the_paper_order():
    args = reproduction.parse_args(['--obj', 'all', '--shots', '2', '4', '--iterates', '0', '1', '2'])
    runs = run_plan.plan(args)
    assert len(runs) == 6 + 6 * 2 * 3
    assert [run.obj for run in runs[:6]] == ['Histopathology', 'Chest', 'Retina_OCT2017', 'Brain', 'Liver',
                                              'Retina_RESC']
    assert {(run.setting, run.shot) for run in runs} == {('zero-shot', 0), ('few-shot', 2), ('few-shot', 4)}
    random = run_plan.plan(reproduction.parse_args(['--obj', 'Liver', '--settings', 'few-shot', '--random_draws', '2',
                                                  '--seed', '5']))
    assert [(run.draw, run.iterate, run.seed) for run in random] == [('rand0', -1, 5), ('rand1', -1, 6)]


def test_every_run_writes_its_results_file_naming_the_selection(tables):
    for setting, shot, draws in (('zero-shot', 0, ['it0']), ('few-shot', 2, ['it0', 'it1'])):
        for obj in OBJECTS:
            for draw in draws:
                record = run_record(tables['results'], setting, obj, shot, draw)
                assert record['selection'] == 'last' and record['obj'] == obj and record['setting'] == setting
                assert set(record) >= {'image_auroc', 'pixel_auroc', 'image_scores', 'labels'}
                # The AUROC is that of the scores it was written with (sklearn's, independently).
                assert record['image_auroc'] == pytest.approx(roc_auc_score(record['labels'], record['image_scores']),
                                                              abs=1e-12)
    assert run_record(tables['results'], 'few-shot', 'Brain', 2, 'it1')['flags']['iterate'] == 1


def test_results_hold_ap_f1_and_aupro_beside_auroc(tables):
    chest = run_record(tables['results'], 'few-shot', 'Chest', 2, 'it0')
    assert chest['image_ap'] == pytest.approx(average_precision(chest['labels'], chest['image_scores']))
    assert chest['image_f1_max'] == pytest.approx(f1_max(chest['labels'], chest['image_scores']))
    assert chest['pixel_auroc'] is None and chest['pixel_ap'] is None and chest['pixel_aupro'] is None
    assert chest['image_ap'] == pytest.approx(average_precision_score(chest['labels'], chest['image_scores']))
    brain = run_record(tables['results'], 'few-shot', 'Brain', 2, 'it0')
    for metric in ('pixel_auroc', 'pixel_ap', 'pixel_f1_max', 'pixel_aupro'):
        assert 0.0 <= brain[metric] <= 1.0
    # The pixel metrics of the maps the saved checkpoint gives, rescored by test_few.py, by sklearn.
    data = tables['data']
    rescored = test_few.main(TINY[:TINY.index('--epoch')] + [
        '--device', 'cpu', '--data_path', str(data), '--fewshot_seed_dir', str(data / 'fewshot_seed'),
        '--obj', 'Brain', '--shot', '2', '--iterate', '0',
        '--save_path', str(tables['folder'] / 'ckpt' / 'few-shot' / '2shot_it0')])
    masks, maps = rescored.masks.ravel(), rescored.pixel_scores.ravel()
    np.testing.assert_allclose(rescored.image_scores, brain['image_scores'], atol=1e-6)
    assert brain['pixel_auroc'] == pytest.approx(roc_auc_score(masks, maps), abs=1e-9)
    assert brain['pixel_ap'] == pytest.approx(average_precision_score(masks, maps), abs=1e-9)
    precision, recall, _ = precision_recall_curve(masks, maps)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    assert brain['pixel_f1_max'] == pytest.approx(f1.max(), abs=1e-6)


def test_checkpoints_have_a_sidecar_of_flags_selection_step_and_scores(tables):
    sidecar = json.loads((tables['folder'] / 'ckpt' / 'few-shot' / '2shot_it0' / 'Brain.json').read_text())
    record = run_record(tables['results'], 'few-shot', 'Brain', 2, 'it0')
    assert sidecar['selection'] == 'last' and sidecar['step'] == 'epoch 0' and sidecar['setting'] == 'few-shot'
    assert sidecar['image_auroc'] == pytest.approx(record['image_auroc'])
    assert sidecar['flags']['shot'] == 2 and sidecar['flags']['features_list'] == [3, 6, 9, 12]


def test_summary_is_the_mean_and_std_over_draws_beside_the_published_numbers(tables):
    for setting, shot, draws in (('zero-shot', 0, ['it0']), ('few-shot', 2, ['it0', 'it1'])):
        for obj in OBJECTS:
            records = [run_record(tables['results'], setting, obj, shot, draw) for draw in draws]
            row = csv_row(tables['rows'], setting, obj)
            assert row['selection'] == 'last' and int(row['draws']) == len(draws)
            papers = published(setting, shot, 'paper', obj) or (None, None)
            reruns = published(setting, shot, 'rerun', obj) or (None, None)
            for level, paper, rerun in zip(('image', 'pixel'), papers, reruns):
                ours = [100 * r[f'{level}_auroc'] for r in records if r[f'{level}_auroc'] is not None]
                if not ours:
                    assert row[f'{level}_auroc_mean'] == '' and row[f'{level}_auroc_minus_paper'] == ''
                    continue
                assert number(row[f'{level}_auroc_mean']) == pytest.approx(statistics.mean(ours))
                expected_std = statistics.stdev(ours) if len(ours) > 1 else None
                assert number(row[f'{level}_auroc_std']) == pytest.approx(expected_std)
                assert number(row[f'{level}_auroc_paper']) == paper
                assert number(row[f'{level}_auroc_rerun']) == rerun
                expected_difference = None if paper is None else pytest.approx(statistics.mean(ours) - paper)
                assert number(row[f'{level}_auroc_minus_paper']) == expected_difference
            aupro = [100 * r['pixel_aupro'] for r in records if r['pixel_aupro'] is not None]
            assert number(row['pixel_aupro_mean']) == (pytest.approx(statistics.mean(aupro)) if aupro else None)


def test_average_row_averages_the_objects_and_pixel_only_those_with_masks(tables):
    for setting in ('zero-shot', 'few-shot'):
        chest, brain, average = (csv_row(tables['rows'], setting, obj) for obj in ('Chest', 'Brain', 'Average'))
        assert number(average['image_auroc_mean']) == pytest.approx(
            (number(chest['image_auroc_mean']) + number(brain['image_auroc_mean'])) / 2)
        assert number(average['pixel_auroc_mean']) == pytest.approx(number(brain['pixel_auroc_mean']))
        assert number(average['pixel_aupro_mean']) == pytest.approx(number(brain['pixel_aupro_mean']))
    zero = {obj: csv_row(tables['rows'], 'zero-shot', obj) for obj in ('Chest', 'Brain', 'Average')}
    assert number(zero['Average']['image_auroc_paper']) == pytest.approx((71.11 + 78.63) / 2)
    assert number(zero['Average']['image_auroc_minus_paper']) == pytest.approx(
        number(zero['Average']['image_auroc_mean']) - (71.11 + 78.63) / 2)
    assert number(zero['Average']['pixel_auroc_minus_paper']) == pytest.approx(
        number(zero['Brain']['pixel_auroc_mean']) - 90.27)
    assert csv_row(tables['rows'], 'few-shot', 'Average')['image_auroc_paper'] == ''


def test_markdown_table_is_laid_out_like_the_papers(tables):
    text = tables['markdown']
    assert "Huang et al., CVPR 2024, Tables 1-2, and the authors' README" in text
    tables_part = text.split('## Cost')[0]
    zero, few = tables_part.split('## Zero-shot (paper Table 1)')[1].split('## Few-shot, k = 2 (no published numbers)')
    for section in (zero, few):
        lines = [line for line in section.splitlines() if line.startswith('|')]
        assert lines[0] == ("| Object | Selection | Draws | Image AUROC | Paper | Authors' re-run | Ours − paper "
                            "| Pixel AUROC | Paper | Authors' re-run | Ours − paper |")
        assert [line.split(' | ')[0] for line in lines[2:]] == ['| ChestXray (Chest)', '| BrainMRI (Brain)',
                                                                '| Average']
        chest = lines[2].split(' | ')
        assert chest[1] == 'last' and chest[-4:] == ['–', '–', '–', '– |']
    assert '| ChestXray (Chest) | last | 1 | ' in zero and ' | 71.11 | 71.11 | ' in zero
    brain = next(line for line in few.splitlines() if line.startswith('| BrainMRI')).split(' | ')
    assert brain[2] == '2' and ' ± ' in brain[3] and brain[4:7] == ['–', '–', '–'] and ' ± ' in brain[7]


def fake_record(obj: str, image: float, pixel=None) -> dict:
    return {'obj': obj, 'selection': 'valid', 'image_auroc': image, 'pixel_auroc': pixel}


def test_four_shot_table_compares_with_table_2_and_the_authors_rerun():
    runs = [run_plan.Run('few-shot', obj, 4, f'it{i}', i, 111) for obj in ('Liver', 'Chest') for i in range(3)]
    records = [fake_record('Liver', 0.80, 0.990), fake_record('Liver', 0.82, 0.994), fake_record('Liver', 0.84, 0.998),
               fake_record('Chest', 0.70), fake_record('Chest', 0.80), fake_record('Chest', 0.90)]
    liver, chest, average = summary_tables.summarise(runs, records)
    assert liver['image_auroc_mean'] == pytest.approx(82.0) and liver['image_auroc_std'] == pytest.approx(2.0)
    assert liver['image_auroc_paper'] == 81.18 and liver['pixel_auroc_rerun'] == 99.69
    assert liver['pixel_auroc_minus_paper'] == pytest.approx(99.4 - 99.73)
    assert chest['pixel_auroc_mean'] is None and chest['image_auroc_std'] == pytest.approx(10.0)
    assert average['image_auroc_mean'] == pytest.approx(81.0)
    assert average['image_auroc_paper'] == pytest.approx((81.18 + 81.95) / 2)
    assert average['pixel_auroc_paper'] == 99.73 and average['selection'] == 'valid'
    text = summary_tables.markdown([liver, chest, average])
    assert '## Few-shot, k = 4 (paper Table 2)' in text
    assert '| LiverCT (Liver) | valid | 3 | 82.00 ± 2.00 | 81.18 | 81.18 | +0.82 | 99.40 ± 0.40 | 99.73 | 99.69 | -0.33 |' \
        in text


def test_validation_set_is_valid_minus_the_support_images(data):
    support = MedDataset(data, 'Brain', IMG_SIZE, 2, 0, data / 'fewshot_seed')
    valid = ValidationSet(data, 'Brain', IMG_SIZE, support.support_images)
    assert len(support.support_images) == 4 and len(valid) == 2 * N_VALID - 4
    assert not set(valid.images) & set(support.support_images)
    assert sorted(valid.labels) == [0] * (N_VALID - 2) + [1] * (N_VALID - 2)


def test_valid_selection_reports_the_test_scores_of_the_checkpoint_it_picked(data, tmp_path):
    common = flags(data, tmp_path, '--obj', 'Brain', '--settings', 'few-shot', '--shots', '2', '--iterates', '0')
    reproduce.main(common + ['--selection', 'valid', '--epoch', '2'])
    path = tmp_path / 'results' / 'few-shot' / 'Brain_2shot_it0.json'
    trained = json.loads(path.read_text())
    sidecar = json.loads((tmp_path / 'ckpt' / 'few-shot' / '2shot_it0' / 'Brain.json').read_text())
    assert trained['selection'] == 'valid' and sidecar['selection'] == 'valid' and sidecar['scored_on'] == 'valid'
    assert trained['selected'] == sidecar['step']
    reproduce.main(common + ['--skip_train'])
    tested = json.loads(path.read_text())
    assert tested['selection'] == 'valid' and tested['selected'] == sidecar['step']
    assert tested['image_auroc'] == pytest.approx(trained['image_auroc'])
    assert tested['pixel_auroc'] == pytest.approx(trained['pixel_auroc'])


def test_single_feature_level_ablation_with_random_draws_runs_end_to_end(data, tmp_path):
    rows = reproduce.main(flags(data, tmp_path, '--obj', 'Chest', '--settings', 'few-shot', '--shots', '2',
                                '--random_draws', '2', '--seed', '7') + ['--features_list', '6'])
    records = [json.loads((tmp_path / 'results' / 'few-shot' / f'Chest_2shot_rand{i}.json').read_text())
               for i in range(2)]
    assert [(r['flags']['features_list'], r['flags']['iterate'], r['flags']['seed']) for r in records] == [
        ([6], -1, 7), ([6], -1, 8)]
    assert all(r['selection'] == 'test' for r in records)
    assert rows[0]['object'] == 'Chest' and rows[0]['draws'] == 2 and rows[-1]['object'] == 'Average'


def test_summary_opens_with_how_the_numbers_were_made(tables):
    """A tiny random-weight run cannot be mistaken for a real one (issue 14)."""
    first_lines = tables['markdown'].splitlines()[:3]
    made = next(line for line in first_lines if line.startswith('Made with: '))
    assert 'model tiny-clip, weights none, image size 56, adapted blocks 3 6 9 12, epochs 1' in made
    assert f"data {tables['data']}" in made and 'device cpu, precision fp32, selection last' in made
    assert 'Random CLIP weights' in made
    for row in tables['rows']:
        assert list(row)[:3] == ['model', 'weights', 'image size']
        assert (row['model'], row['weights'], row['epochs'], row['selection']) == ('tiny-clip', 'none', '1', 'last')


def test_reproduce_keeps_its_checkpoints_away_from_the_released_ones():
    assert reproduction.parse_args([]).ckpt_dir == Path('ckpt/reproduce')
    for setting, folder in run_plan.RELEASED.items():
        for task in run_plan.plan(reproduction.parse_args(['--obj', 'Brain', '--settings', setting])):
            assert folder not in task.save_path(reproduction.parse_args([]).ckpt_dir).parents
            assert task.save_path(reproduction.parse_args([]).ckpt_dir) != folder


def test_summary_cells_carry_the_95_percent_interval_of_their_mean(tables):
    """Each row's [low, high] is the percentile interval of the mean over draws of the records' replicates."""
    records = [run_record(tables['results'], 'few-shot', 'Brain', 2, draw) for draw in ('it0', 'it1')]
    assert all(r['bootstrap']['resamples'] == 1000 and r['bootstrap']['seed'] == 0 for r in records)
    row = csv_row(tables['rows'], 'few-shot', 'Brain')
    for level in ('image', 'pixel'):
        pooled = np.mean([r['bootstrap'][f'{level}_auroc']['replicates'] for r in records], axis=0)
        assert number(row[f'{level}_auroc_low']) == pytest.approx(100 * np.quantile(pooled, 0.025))
        assert number(row[f'{level}_auroc_high']) == pytest.approx(100 * np.quantile(pooled, 0.975))
    assert csv_row(tables['rows'], 'few-shot', 'Chest')['pixel_auroc_low'] == ''
    # The Average's interval: of the mean over the objects (each resampled on its own) of their draws' mean.
    chest = [run_record(tables['results'], 'few-shot', 'Chest', 2, draw) for draw in ('it0', 'it1')]
    objects = [np.mean([r['bootstrap']['image_auroc']['replicates'] for r in rs], axis=0) for rs in (records, chest)]
    average = csv_row(tables['rows'], 'few-shot', 'Average')
    assert number(average['image_auroc_low']) == pytest.approx(100 * np.quantile(np.mean(objects, axis=0), 0.025))
    brain = next(line for line in tables['markdown'].splitlines() if line.startswith('| BrainMRI')).split(' | ')
    assert brain[3].endswith(f"[{number(row['image_auroc_low']):.2f}, {number(row['image_auroc_high']):.2f}]")


def test_both_normalisations_in_one_table_with_their_paired_difference(tables, tmp_path):
    """--normalisation test reference on the trained checkpoints: a row each, and reference − test paired."""
    data = tables['data']
    reproduce.main(TINY + ['--data_path', str(data), '--fewshot_seed_dir', str(data / 'fewshot_seed'),
                           '--results_dir', str(tmp_path), '--ckpt_dir', str(tables['folder'] / 'ckpt'),
                           '--obj', 'Brain', '--settings', 'few-shot', '--shots', '2', '--iterates', '0',
                           '--skip_train', '--normalisation', 'test', 'reference'])
    test_rule = json.loads((tmp_path / 'few-shot' / 'Brain_2shot_it0.json').read_text())
    reference = json.loads((tmp_path / 'few-shot' / 'Brain_2shot_it0_reference.json').read_text())
    assert (test_rule['normalisation'], reference['normalisation']) == ('test', 'reference')
    assert reference['images'] == test_rule['images'] and reference['image_scores'] != test_rule['image_scores']
    with open(tmp_path / 'summary.csv', encoding='utf-8') as handle:
        rows = [row for row in csv.DictReader(handle) if row['object'] == 'Brain']
    assert [row['normalisation'] for row in rows] == ['test', 'reference']
    for level in ('image', 'pixel'):
        expected = 100 * (reference[f'{level}_auroc'] - test_rule[f'{level}_auroc'])
        assert number(rows[1][f'{level}_auroc_minus_test']) == pytest.approx(expected)
        differences = (np.array(reference['bootstrap'][f'{level}_auroc']['replicates'])
                       - np.array(test_rule['bootstrap'][f'{level}_auroc']['replicates']))
        assert number(rows[1][f'{level}_auroc_minus_test_low']) == pytest.approx(100 * np.quantile(differences, 0.025))
        assert 0 < number(rows[1][f'{level}_auroc_minus_test_p']) <= 1 and rows[0][f'{level}_auroc_minus_test'] == ''
    text = (tmp_path / 'summary.md').read_text(encoding='utf-8')
    assert '| Object | Selection | Draws | Normalisation | Image AUROC |' in text and 'Reference − test' in text
    line = next(line for line in text.splitlines() if line.startswith('| BrainMRI (Brain) | last | 1 | reference'))
    assert ', p = ' in line


def test_a_study_takes_one_normalisation(capsys):
    """A study's rows are its variants: test and reference records of one variant would pool into one row."""
    for extra in (['--normalisation', 'test', 'reference'], ['--normalisation', 'reference']):
        assert reproduce.run(reproduce.main, ['--study', 'levels', *extra]) == 2
        assert '--study takes one --normalisation' in capsys.readouterr().err
    assert reproduction.parse_args(['--study', 'levels', '--skip_train', '--normalisation', 'reference']).study == 'levels'
