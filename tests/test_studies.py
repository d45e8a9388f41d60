"""reproduce.py --study on synthetic data with the tiny random CLIP: the runs each study makes, its
rows and numbers, its figures; and the per-level maps of the one scoring path."""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reproduce
from mvfa.studies.paper_results import PAPER_NAMES
from mvfa.studies import reproduction
from mvfa.studies import plan as run_plan
from CLIP import MultiLevelAdaptedCLIP, create_model
from dataset.synthetic import generate
from mvfa.method import scoring
from mvfa.studies import figures, plots, studies
from mvfa.engine.checkpoint import read_checkpoint
from mvfa.engine.evaluation import evaluate
from mvfa.method.memory_bank import build_memory_bank
from mvfa.method.metrics import auroc
from mvfa.engine.session import build_model

ROOT = Path(__file__).resolve().parents[1]
IMG_SIZE = 56
TINY = ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', '3', '6', '9', '12',
        '--img_size', str(IMG_SIZE), '--epoch', '1', '--batch_size', '64', '--device', 'cpu']
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('data'), size=32, n_test=3, n_valid=4, shots=(1, 2), iterations=1)


def study(data, folder: Path, name: str, *extra: str) -> list:
    return reproduce.main(TINY + ['--data_path', str(data), '--fewshot_seed_dir', str(data / 'fewshot_seed'),
                                  '--results_dir', str(folder / 'results'), '--ckpt_dir', str(folder / 'ckpt'),
                                  '--study', name, *extra])


def has_jet_colour_bar(path: Path) -> bool:
    """Whether the PNG holds a vertical JET strip: a column whose coloured pixels run from red at the top
    through green to blue at the bottom, in many shades (an overlay column starts at a title or a frame)."""
    pixels = np.asarray(Image.open(path).convert('RGB')).astype(int)
    for column in pixels.transpose(1, 0, 2):
        coloured = column[np.ptp(column, axis=1) > 60]  # not white, grey or black
        if len(coloured) < 100:
            continue
        top, middle, bottom = coloured[0], coloured[len(coloured) // 2], coloured[-1]
        if (top[0] > 100 > top[2] and bottom[2] > 100 > bottom[0] and middle[1] > max(middle[0], middle[2])
                and len(np.unique(coloured, axis=0)) > 50):
            return True
    return False


def test_shot_curve_says_what_its_band_is():
    """Catches: a band with no legend entry, or one drawn (and named) for a single draw, where there is no std."""
    ours = {'image': [(70.0, 3.0), (75.0, 2.0)], 'pixel': [(90.0, None), (92.0, None)]}
    figure = plots.shot_curve_figure([1, 2], ours, {'image': [None, 80.0], 'pixel': [None, None]})
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    plots.pyplot().close(figure)
    assert labels == ['image AUROC', 'image band: ± 1 sample std over draws', 'image, paper', 'pixel AUROC']


def records(folder: Path) -> list:
    return [json.loads(path.read_text()) for path in sorted(folder.glob('*/*.json'))]


def csv_rows(path: Path) -> list:
    with open(path, encoding='utf-8') as handle:
        return list(csv.DictReader(handle))


def average(rows: list, variant: str) -> dict:
    return next(row for row in rows if row['variant'] == variant and row['object'] == 'Average')


def test_importing_the_studies_loads_neither_torch_nor_matplotlib():
    """Catches: a module-level torch or matplotlib import on reproduce.py's --help path."""
    loaded = subprocess.run([sys.executable, '-c', 'import sys, mvfa.studies.studies, mvfa.studies.plots; '
                             "print(sorted({'torch', 'matplotlib', 'sklearn'} & set(sys.modules)))"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == '[]'


def test_per_level_maps_are_the_summed_maps_parts_and_each_levels_own_scoring():
    """Catches: level maps stacked on the wrong axis, out of order, or scored apart from score_batch."""
    torch.manual_seed(0)
    model = MultiLevelAdaptedCLIP(create_model('tiny-clip', img_size=IMG_SIZE, pretrained=None), [3, 6, 9])
    text = torch.nn.functional.normalize(torch.randn(96, 2), dim=0)
    bank = build_memory_bank(model, torch.rand(2, 3, IMG_SIZE, IMG_SIZE), batch_size=2)
    with torch.no_grad():
        seg, det = model.adapter_tokens(torch.rand(3, 3, IMG_SIZE, IMG_SIZE))
    for head, tokens in (('seg', seg), ('det', det)):
        scores = scoring.score_batch(seg, det, text, IMG_SIZE, bank, map_head=head, level_maps=True)
        plain = scoring.score_batch(seg, det, text, IMG_SIZE, bank, map_head=head)
        assert scores.zero_level_maps.shape == scores.few_level_maps.shape == (3, 3, IMG_SIZE, IMG_SIZE)
        torch.testing.assert_close(scores.zero_level_maps.sum(dim=1), plain.zero_map, atol=1e-5, rtol=0)
        torch.testing.assert_close(scores.few_level_maps.sum(dim=1), plain.few_map, atol=1e-5, rtol=0)
        for level in range(3):
            alone = scoring.few_shot_maps([tokens[level]], type(bank)([bank.seg[level]], [bank.det[level]]),
                                          head, IMG_SIZE)
            torch.testing.assert_close(scores.few_level_maps[:, level], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(scores.zero_level_maps[:, level],
                                       scoring.zero_shot_maps([tokens[level]], text, IMG_SIZE), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match='map_head'):
        scoring.score_batch(seg, det, text, IMG_SIZE, level_maps=True)


def test_levels_study_runs_each_level_alone_and_all_of_them(data, tmp_path):
    """Catches: the single-level runs adapting every level (--features_list not handed to the scripts), the
    Average not the mean over objects, and published numbers on rows the paper has none for."""
    rows = study(data, tmp_path, 'levels', '--obj', 'Brain', 'Chest', '--features_list', '3', '12',
                 '--shots', '1', '--iterates', '0')
    out = tmp_path / 'results' / 'levels'
    assert [row['variant'] for row in rows if row['object'] == 'Average'] == ['block 3', 'block 12', 'all (3 12)']
    for folder, features in (('1shot_blocks_3', [3]), ('1shot_blocks_12', [12]), ('1shot_blocks_3_12', [3, 12])):
        runs = records(out / folder)
        assert [(r['obj'], r['shot'], r['flags']['features_list']) for r in runs] == [
            ('Brain', 1, features), ('Chest', 1, features)]
        adapters = read_checkpoint(tmp_path / 'ckpt' / 'levels' / folder / 'few-shot' / '1shot_it0' / 'Brain.pth')
        assert len(adapters['seg_adapters']) == 2 * len(features)  # fc1 and fc2 weights per level
    table = csv_rows(out / 'summary.csv')
    single = [json.loads((out / '1shot_blocks_12' / 'few-shot' / f'{obj}_1shot_it0.json').read_text())
              for obj in ('Brain', 'Chest')]
    row = average(table, 'block 12')
    assert float(row['image_auroc_mean']) == pytest.approx(50 * (single[0]['image_auroc'] + single[1]['image_auroc']))
    assert float(row['pixel_auroc_mean']) == pytest.approx(100 * single[0]['pixel_auroc'])
    assert row['image_auroc_paper'] == row['pixel_auroc_paper'] == '' and row['features_list'] == '12'
    assert table[0]['model'] == 'tiny-clip' and table[0]['adapted blocks'] == '3 / 12 / 3 12'
    text = (out / 'summary.md').read_text()
    assert text.splitlines()[2].startswith('Made with: model tiny-clip') and '88.97' in text and 'block 12' in text


def test_levels_table_gives_the_papers_numbers_to_the_all_levels_row_alone():
    """Catches: Table 2's numbers on a single-level row, or the paper's average not over the objects run."""
    args = reproduction.parse_args(['--study', 'levels', '--obj', 'all'])
    single, *_, every = studies.level_variants(args)
    runs = [run_plan.Run('few-shot', obj, 4, 'it0', 0, 111) for obj in PAPER_NAMES]
    results = [{'image_auroc': 0.9, 'pixel_auroc': 0.95 if obj in ('Brain', 'Liver', 'Retina_RESC') else None}
               for obj in PAPER_NAMES]
    assert (single.label, every.label) == ('block 6', 'all (6 12 18 24)')
    assert every.args.features_list == [6, 12, 18, 24] and single.args.features_list == [6]
    paper = studies.variant_rows(every, runs, results)[-1]
    assert (round(paper['image_auroc_paper'], 2), round(paper['pixel_auroc_paper'], 2)) == (88.97, 98.67)
    assert paper['image_auroc_mean'] == pytest.approx(90.0) and paper['pixel_auroc_mean'] == pytest.approx(95.0)
    assert all(row['image_auroc_paper'] is None for row in studies.variant_rows(single, runs, results))


def test_projectors_study_trains_projectors_that_leave_clip_as_it_is(data, tmp_path):
    """Catches: --adaptation not reaching the scripts (both rows adapters), and the adapter row losing the
    paper's Table 1 numbers or the projector row gaining them."""
    rows = study(data, tmp_path, 'projectors', '--obj', 'Chest')
    out = tmp_path / 'results' / 'projectors'
    images = torch.rand(2, 3, IMG_SIZE, IMG_SIZE)
    pooled = {}
    for adaptation in ('adapter', 'projector'):
        record, = records(out / adaptation)
        assert record['setting'] == 'zero-shot' and record['flags']['adaptation'] == adaptation
        checkpoint = tmp_path / 'ckpt' / 'projectors' / adaptation / 'zero-shot' / 'Chest.pth'
        model = build_model(argparse.Namespace(**record['flags']), torch.device('cpu'), 'fp32', checkpoint)
        assert model.adaptation == adaptation
        with torch.no_grad():
            pooled[adaptation] = (model(images)[0], model.clipmodel.visual(images))
    torch.testing.assert_close(*pooled['projector'], atol=1e-5, rtol=0)  # the frozen CLIP's own embedding
    assert (pooled['adapter'][0] - pooled['adapter'][1]).abs().max() > 1e-3
    adapter, projector = (next(r for r in rows if r['variant'] == name and r['object'] == 'Average')
                          for name in ('adapter', 'projector'))
    assert adapter['image_auroc_paper'] == 71.11 and projector['image_auroc_paper'] is None
    assert adapter['image_auroc_mean'] == pytest.approx(100 * records(out / 'adapter')[0]['image_auroc'])


def test_shots_study_gives_mean_and_std_over_draws_and_a_curve(data, tmp_path):
    """Catches: std over objects instead of over draws, a k run with another k's support, no curve."""
    assert [v.label for v in studies.shot_variants(reproduction.parse_args(['--study', 'shots']))] == [
        'k = 2', 'k = 4', 'k = 8', 'k = 16']
    study(data, tmp_path, 'shots', '--obj', 'Chest', '--shots', '1', '2', '--random_draws', '2')
    out = tmp_path / 'results' / 'shots'
    table = csv_rows(out / 'summary.csv')
    for shot in (1, 2):
        runs = records(out / f'{shot}shot')
        assert [(r['shot'], len(r['support_images'])) for r in runs] == [(shot, 2 * shot)] * 2
        values = [100 * r['image_auroc'] for r in runs]
        row = average(table, f'k = {shot}')
        assert int(row['draws']) == 2 and row['image_auroc_paper'] == ''
        assert float(row['image_auroc_mean']) == pytest.approx(statistics.mean(values))
        assert float(row['image_auroc_std']) == pytest.approx(statistics.stdev(values))
    assert (out / 'shot_curve.png').read_bytes()[:8] == PNG_SIGNATURE


def test_figure_studies_share_their_adapters_and_score_as_the_method(data, tmp_path):
    """Catches: a fused map that is not the method's (its pixel AUROC differs from the run's), 'before'
    features that depend on the adapters, a t-SNE that is not deterministic under the seed."""
    study(data, tmp_path, 'level_maps', '--obj', 'Brain', '--shots', '1')
    out = tmp_path / 'results' / 'level_maps'
    record, = records(out / '1shot')
    row, = csv_rows(out / 'summary.csv')
    assert float(row['fused pixel AUROC']) == pytest.approx(100 * record['pixel_auroc'], abs=1e-6)
    assert list(row)[-6:] == ['object', 'block 3 pixel AUROC', 'block 6 pixel AUROC', 'block 9 pixel AUROC',
                              'block 12 pixel AUROC', 'fused pixel AUROC']
    assert (out / 'level_maps.png').read_bytes()[:8] == PNG_SIGNATURE and has_jet_colour_bar(out / 'level_maps.png')

    # The t-SNE study tests the adapters level_maps trained (<ckpt_dir>/figures/), without training again.
    study(data, tmp_path, 'tsne', '--obj', 'Brain', '--shots', '1', '--skip_train')
    out = tmp_path / 'results' / 'tsne'
    tested, = records(out / '1shot')
    assert Path(tested['checkpoint']) == tmp_path / 'ckpt' / 'figures' / '1shot' / 'few-shot' / '1shot_it0' / 'Brain.pth'
    assert tested['image_scores'] == pytest.approx(record['image_scores'], abs=1e-6)
    points = csv_rows(out / 'embedding.csv')
    assert [int(p['label']) for p in points] == [0, 0, 0, 1, 1, 1]
    assert (out / 'tsne.png').read_bytes()[:8] == PNG_SIGNATURE

    run = figures.load_run(tested)
    level = evaluate(run.model, run.loader, run.text_features, True, run.bank, progress=False,
                             keep_level_maps=True)
    assert level.level_maps.shape == (6, 4, IMG_SIZE, IMG_SIZE)
    assert 0.0 <= level.level_maps.min() and level.level_maps.max() <= 1.0
    assert float(row['block 3 pixel AUROC']) == pytest.approx(100 * auroc(level.masks.ravel(),
                                                                          level.level_maps[:, 0].ravel()))
    before, after = figures.image_features(run.model, run.loader)
    embedded = figures.tsne_embedding(after, seed=tested['flags']['seed'])
    assert embedded.shape == (6, 2)
    np.testing.assert_array_equal(figures.tsne_embedding(after, seed=tested['flags']['seed']), embedded)
    assert [float(p['after_x']) for p in points] == pytest.approx(embedded[:, 0].tolist(), abs=1e-4)
    for adapters in (run.model.seg_adapters, run.model.det_adapters):
        torch.nn.init.normal_(adapters[0].fc1[0].weight)
    before_again, after_again = figures.image_features(run.model, run.loader)
    np.testing.assert_allclose(before_again, before, atol=1e-6)
    assert np.abs(after_again - after).max() > 1e-3


def test_levels_rows_carry_intervals_and_their_paired_difference_from_all_levels(data, tmp_path):
    """Each single-level row's difference from the all-levels row is the paired bootstrap of the two runs'
    replicates (same test images, same resamples); the all row has none."""
    rows = study(data, tmp_path, 'levels', '--obj', 'Brain', '--features_list', '3', '12', '--shots', '1',
                 '--iterates', '0', '--epoch', '1')
    out = tmp_path / 'results' / 'levels'
    single, every = (json.loads((out / folder / 'few-shot' / 'Brain_1shot_it0.json').read_text())
                     for folder in ('1shot_blocks_3', '1shot_blocks_3_12'))
    row = next(r for r in rows if r['variant'] == 'block 3' and r['object'] == 'Brain')
    for level in ('image', 'pixel'):
        ours, theirs = (np.array(r['bootstrap'][f'{level}_auroc']['replicates']) for r in (single, every))
        assert row[f'{level}_auroc_minus_baseline'] == pytest.approx(
            100 * (single[f'{level}_auroc'] - every[f'{level}_auroc']))
        assert row[f'{level}_auroc_minus_baseline_high'] == pytest.approx(100 * np.quantile(ours - theirs, 0.975))
        assert row[f'{level}_auroc_low'] == pytest.approx(100 * np.quantile(ours, 0.025))
    assert next(r for r in rows if r['variant'] == 'all (3 12)')['image_auroc_minus_baseline'] is None
    text = (out / 'summary.md').read_text()
    assert '| Variant | Draws | Image AUROC | Paper | − all levels | Pixel AUROC |' in text and ', p = ' in text
