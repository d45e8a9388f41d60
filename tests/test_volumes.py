"""DICOM and NIfTI in predict.py (issue 21): the scans pydicom and nibabel ship, windows from the files'
own tags, the viewer's orientation on asymmetric volumes, series order, the NIfTI map, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.testing import data_path
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_windowing

import predict
from CLIP import MultiLevelAdaptedCLIP, create_model
from dataset import volumes, windows
from dataset.volumes import read_dicom_image, read_dicom_series, read_nifti, slice_image
from mvfa.runs.cli import run
from mvfa.runs.scan_inputs import InputImage
from mvfa.runs.scan_maps import VolumeMaps
from scans import FEATURES, SIZE, checkpoint_flags, write_dicom, write_nifti

NIBABEL_DATA = Path(data_path)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = MultiLevelAdaptedCLIP(create_model('tiny-clip', SIZE, None), [int(f) for f in FEATURES])
    path = tmp_path_factory.mktemp('checkpoint') / 'Brain.pth'
    torch.save({'seg_adapters': model.seg_adapters.state_dict(), 'det_adapters': model.det_adapters.state_dict()},
               path)
    return path


def test_ct_small_is_read_in_hounsfield_units_and_windowed():
    path = Path(get_testdata_file('CT_small.dcm'))
    dataset = pydicom.dcmread(path)
    assert (float(dataset.RescaleSlope), float(dataset.RescaleIntercept)) == (1.0, -1024.0)
    hounsfield = dataset.pixel_array.astype(np.float64) * 1.0 - 1024.0
    assert (hounsfield.min(), hounsfield.max()) == (-896.0, 1167.0)
    np.testing.assert_array_equal(volumes.dicom_values(dataset, path), hounsfield)
    # No window of its own: auto gives soft tissue, level 50 / width 400: 0 at HU <= -150, 1 above 249.
    scan = read_dicom_image(path, 'auto')
    assert scan.intensity.record() == {'method': 'window', 'source': 'auto: CT without a window of its own -> '
                                       'soft_tissue', 'level': 50.0, 'width': 400.0, 'inverted': False}
    np.testing.assert_allclose(scan.unit, np.clip((hounsfield + 150) / 399, 0, 1), atol=1e-6)
    # Brain, 40 / 80: 0 at HU <= 0, 1 above 79; and the same through pydicom's own VOI windowing.
    brain = read_dicom_image(path, 'brain').unit
    np.testing.assert_allclose(brain, np.clip(hounsfield / 79, 0, 1), atol=1e-6)
    dataset.WindowCenter, dataset.WindowWidth = 40, 80
    by_pydicom = apply_windowing(hounsfield, dataset)
    np.testing.assert_allclose(brain, (by_pydicom - by_pydicom.min()) / (by_pydicom.max() - by_pydicom.min()),
                               atol=1e-6)
    explicit = read_dicom_image(path, '-600,1500')  # 0 at HU <= -1350, 1 above 149
    assert (explicit.intensity.level, explicit.intensity.width) == (-600.0, 1500.0)
    np.testing.assert_allclose(explicit.unit, np.clip((hounsfield + 1350) / 1499, 0, 1), atol=1e-6)
    with pytest.raises(windows.DataError, match='no window of its own'):
        read_dicom_image(path, 'file')


def test_mr_small_is_normalised_per_volume_or_by_its_own_window():
    path = Path(get_testdata_file('MR_small.dcm'))
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    # MR: the 0.5 and 99.5 percentiles of the pixels above the minimum go to 0 and 1.
    scan = read_dicom_image(path, 'auto')
    low, high = np.percentile(stored[stored > stored.min()], (0.5, 99.5))
    assert scan.intensity.method == 'percentile' and scan.intensity.values == pytest.approx((low, high))
    np.testing.assert_allclose(scan.unit, np.clip((stored - low) / (high - low), 0, 1), atol=1e-6)
    # Its own window, WindowCenter 600 / WindowWidth 1600: 0 at or below -200, 1 above 1399.
    own = read_dicom_image(path, 'file')
    assert (own.intensity.level, own.intensity.width) == (600.0, 1600.0)
    np.testing.assert_allclose(own.unit, np.clip((stored + 200) / 1599, 0, 1), atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.arange(12, dtype=np.int16).reshape(3, 4) * 100
    common = dict(position=None, modality='CR', slope=1.0, intercept=0.0, window=(550.5, 1101))  # 0 at 0, 1 above 1100
    plain = read_dicom_image(write_dicom(tmp_path / 'm2.dcm', pixels, **common), 'auto')
    inverted = read_dicom_image(write_dicom(tmp_path / 'm1.dcm', pixels, photometric='MONOCHROME1', **common), 'auto')
    np.testing.assert_allclose(plain.unit, np.clip(pixels / 1100, 0, 1), atol=1e-6)
    np.testing.assert_allclose(inverted.unit, 1 - plain.unit, atol=1e-6)
    assert inverted.intensity.inverted and not plain.intensity.inverted
    assert inverted.image('axial', 0)[0, 0] == 255 and plain.image('axial', 0)[0, 0] == 0


def marked_volume() -> np.ndarray:
    """(6, 5, 4) zeros stored LAS (axis 0 runs to the patient's left), marked at two corners: 1 at the
    right-anterior-superior voxel, 2 at the right-posterior-superior one."""
    data = np.zeros((6, 5, 4), dtype=np.float32)
    data[0, 4, 3] = 1.0  # i = 0 is the right end of an LAS array
    data[0, 0, 3] = 2.0
    return data


LAS = np.diag([-2.0, 3.0, 4.0, 1.0])


def test_slices_are_drawn_as_a_viewer_shows_them(tmp_path):
    """Radiological convention: patient's right on the image's left, anterior (axial) or superior at the top."""
    # Window level 2, width 4: 0, 1 and 2 become 0, 1/3 and 2/3.
    scan = read_nifti(write_nifti(tmp_path / 'marked.nii.gz', marked_volume(), LAS), '2,4')
    assert scan.unit.shape == (6, 5, 4) and nib.aff2axcodes(scan.affine) == ('L', 'A', 'S')
    axial = slice_image(scan.unit, 'axial', 3)  # the superior end: index 3 from the inferior one
    assert axial.shape == (5, 6)
    assert axial[0, 0] > 0 and axial[-1, 0] > 0  # right-anterior at the top left, right-posterior at the bottom left
    assert axial[0, 0] < axial[-1, 0] and np.count_nonzero(axial) == 2
    coronal = slice_image(scan.unit, 'coronal', 4)  # the anterior end
    assert coronal.shape == (4, 6) and coronal[0, 0] > 0 and np.count_nonzero(coronal) == 1
    sagittal = slice_image(scan.unit, 'sagittal', 5)  # the right end: index 5 from the left one
    assert sagittal.shape == (4, 5) and sagittal[0, 0] > 0 and sagittal[0, -1] > 0  # anterior left, posterior right
    assert sagittal[0, 0] < sagittal[0, -1]


def test_anatomical_nii_is_turned_canonical():
    """nibabel's anatomical.nii is stored LAS: its canonical array is the stored one flipped left-right."""
    path = NIBABEL_DATA / 'anatomical.nii'
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == ('L', 'A', 'S')
    scan = read_nifti(path, 'percentile')
    stored = np.asarray(image.dataobj, dtype=np.float64)
    low, high = np.percentile(stored[stored > stored.min()], (0.5, 99.5))
    np.testing.assert_allclose(scan.unit, np.clip((stored[::-1] - low) / (high - low), 0, 1), atol=1e-6)
    np.testing.assert_allclose(volumes.canonical_affine(image.affine, image.shape),
                               nib.as_closest_canonical(image).affine)


def test_4d_nifti_needs_a_frame():
    path = NIBABEL_DATA / 'example4d.nii.gz'
    with pytest.raises(volumes.DataError, match=r'4-D \(128x96x24x2: 2 volumes\): pick one with --frame 0..1'):
        read_nifti(path, 'auto')
    scan = read_nifti(path, 'auto', frame=1)
    assert scan.shape == (128, 96, 24)


def write_series(folder: Path, positions, names=None, pixels=None) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, z in enumerate(positions):
        slice_pixels = np.full((3, 4), 1024 + 10 * number, dtype=np.int16) if pixels is None else pixels[number]
        name = names[number] if names else f'{number}.dcm'
        files.append(write_dicom(folder / name, slice_pixels, position=(-10.0, -20.0, z)))
    return files


def test_series_is_ordered_by_position_not_by_name(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(1024 - 200, 1024 + 300, (4, 3, 4)).astype(np.int16)
    # File names sort against the positions: z.dcm of the highest slice first.
    files = write_series(tmp_path / 'series', [7.5, 0.0, 5.0, 2.5], ['a.dcm', 'd.dcm', 'b.dcm', 'c.dcm'], pixels)
    scan = read_dicom_series(files, '40,400', tmp_path / 'series')
    assert [f.name for f in scan.files] == ['d.dcm', 'c.dcm', 'b.dcm', 'a.dcm']
    # LPS -> RAS: x and y flip; columns 0.8 mm, rows 0.5 mm apart, slices 2.5 mm; first slice at (-10, -20, 0) LPS.
    np.testing.assert_allclose(scan.affine, [[-0.8, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, 2.5, 0], [0, 0, 0, 1]])
    # Each axial slice, inferior first, is drawn as its file is stored (the radiological convention).
    for index, file in enumerate(scan.files):
        np.testing.assert_array_equal(scan.image('axial', index), read_dicom_image(file, '40,400').image('axial', 0))


@pytest.mark.parametrize('positions, words', [
    ([0.0, 2.5, 7.5, 10.0], 'are 5.000 mm apart, the others 2.500 mm: a slice of the series is missing'),
    ([0.0, 2.5, 2.5, 5.0], 'share the slice position 2.500 mm: remove the duplicate slice'),
])
def test_series_with_missing_or_duplicate_slices_is_refused(tmp_path, checkpoint, capsys, positions, words):
    write_series(tmp_path / 'series', positions)
    out = tmp_path / 'out'
    assert run(predict.main, checkpoint_flags(checkpoint) + ['--out', str(out), str(tmp_path / 'series')]) == 2
    assert words in one_error_line(capsys)
    assert not out.exists()


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize('name, words', [
    ('rtplan.dcm', 'has no pixel data (a DICOM RTPLAN without an image)'),
    ('MR_small_jpeg_ls_lossless.dcm', 'is compressed as JPEG-LS Lossless Image Compression and no decoder for it '
                                      'is installed: pip install pylibjpeg pylibjpeg-libjpeg (or pyjpegls)'),
])
def test_dicom_that_cannot_be_scored_is_one_line(tmp_path, checkpoint, capsys, name, words):
    out = tmp_path / 'out'
    assert run(predict.main, checkpoint_flags(checkpoint) + ['--out', str(out), get_testdata_file(name)]) == 2
    assert words in one_error_line(capsys)
    assert not out.exists()


def test_4d_nifti_in_predict_is_one_line(tmp_path, checkpoint, capsys):
    out = tmp_path / 'out'
    argv = checkpoint_flags(checkpoint) + ['--out', str(out), str(NIBABEL_DATA / 'example4d.nii.gz')]
    assert run(predict.main, argv) == 2
    assert 'pick one with --frame 0..1' in one_error_line(capsys)
    assert not out.exists()


def test_map_lands_on_the_marker_with_the_input_affine(tmp_path):
    """A map hot where the marker is drawn (top left of axial slice 3) is hot at the marker's stored voxel."""
    source = write_nifti(tmp_path / 'marked.nii.gz', marked_volume(), LAS)
    scan = read_nifti(source, 'percentile')
    maps = VolumeMaps(tmp_path / 'maps')
    hot = np.zeros((SIZE, SIZE), dtype=np.float32)
    # Resized (bilinear) to the 6 x 5 slice, the top-left pixel samples the map at (5.1, 4.2) px, the next
    # ones at 13.5 px and beyond: the 10 x 10 hot corner makes exactly the top-left pixel hot.
    hot[:10, :10] = 1.0
    maps.add(InputImage(source, scan, 'axial', 3), 0.7, hot)
    maps.add(InputImage(source, scan, 'axial', 1), 0.2, np.zeros((SIZE, SIZE), dtype=np.float32))
    records = maps.finish([tmp_path / 'maps' / 'marked.nii.gz'])
    assert records[0]['score'] == 0.7 and records[0]['max_slice'] == 3 and records[0]['slices'] == [1, 3]
    written = nib.load(tmp_path / 'maps' / 'marked.nii.gz')
    np.testing.assert_allclose(written.affine, LAS)
    assert written.shape == (6, 5, 4)
    values = np.asarray(written.dataobj)
    assert values[0, 4, 3] == pytest.approx(1.0) and np.argmax(values) == np.ravel_multi_index((0, 4, 3), (6, 5, 4))


def test_predict_scores_a_series_and_a_nifti_with_maps(tmp_path, checkpoint):
    series = tmp_path / 'ct'
    write_series(series, [0.0, 2.5, 5.0], pixels=np.random.default_rng(1).integers(900, 1300, (3, 20, 24)))
    nifti = write_nifti(tmp_path / 'mr.nii.gz', np.random.default_rng(2).random((16, 12, 5)).astype(np.float32),
                        LAS)
    out = tmp_path / 'out'
    rows = predict.main(checkpoint_flags(checkpoint) + ['--out', str(out), '--window', 'abdomen', '--slices', '1:',
                                                        str(series), str(nifti)])
    assert [(Path(row['path']).name, row['slice']) for row in rows] == [
        ('ct', 1), ('ct', 2), ('mr.nii.gz', 1), ('mr.nii.gz', 2), ('mr.nii.gz', 3), ('mr.nii.gz', 4)]
    record = json.loads((out / 'scores.json').read_text())
    ct, mr = record['scans']
    ct_rows = [row for row in rows if row['path'] == str(series)]
    top = max(ct_rows, key=lambda row: row['score'])
    assert ct['score'] == top['score'] and ct['max_slice'] == top['slice'] and ct['slices'] == [1, 2]
    assert ct['intensity'] == {'method': 'window', 'source': '--window abdomen', 'level': 50.0, 'width': 400.0,
                               'inverted': False}
    assert ct['identifiers']['SeriesInstanceUID'] == '1.2.3.4' and ct['kind'] == 'dicom series'
    ct_map = nib.load(ct['map'])
    np.testing.assert_allclose(ct_map.affine, [[-0.8, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, 2.5, 0], [0, 0, 0, 1]],
                               atol=1e-6)
    assert ct_map.shape == (24, 20, 3) and ct_map.header['descrip'].tobytes().startswith(b'MVFA anomaly map of 1.2.3.4')
    values = np.asarray(ct_map.dataobj)
    assert np.all(values[:, :, 0] == 0) and np.all((values[:, :, 1:] >= 0) & (values[:, :, 1:] <= 1))
    mr_map = nib.load(mr['map'])
    np.testing.assert_allclose(mr_map.affine, LAS)
    assert mr_map.shape == (16, 12, 5) and mr['intensity']['method'] == 'window'
    assert len(list((out / 'heatmaps').iterdir())) == 6


@pytest.mark.parametrize('flag, value, words', [
    ('--window', 'lungs', '--window must be auto, file, percentile, LEVEL,WIDTH with WIDTH >= 1, or one of brain,'),
    ('--window', '40,0', '--window must be auto, file, percentile, LEVEL,WIDTH with WIDTH >= 1'),
    ('--slices', '3', '--slices must be START:STOP'),
    ('--frame', '-1', '--frame must be a volume of the 4-D NIfTI: an integer from 0, got -1'),
])
def test_bad_scan_flags_are_one_line(tmp_path, checkpoint, capsys, flag, value, words):
    argv = checkpoint_flags(checkpoint) + ['--out', str(tmp_path / 'out'), flag, value,
                                           get_testdata_file('CT_small.dcm')]
    assert run(predict.main, argv) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / 'out').exists()
