"""Bad input gets one clear line and exit status 2 before any model is built; long runs never lose work."""
from __future__ import annotations

import errno
import random
import shutil
import urllib.error
import warnings
from pathlib import Path
from typing import List

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import mvfa.engine.session
import test_few
import test_zero
import train_few
import train_zero
from CLIP import MultiLevelAdaptedCLIP, WeightsError, create_model
from CLIP.factory import LOCAL_WEIGHTS
from dataset.readers import load_image, load_mask
from dataset.medical_zero import MedTrainDataset
from dataset.synthetic import generate
from mvfa.engine.checkpoint import ADAPTER_KEYS, CheckpointError, load_adapters, read_checkpoint, save_adapters
from mvfa.common.sidecar import read_sidecar
from mvfa.common import outputs
from mvfa.runs import few_shot, zero_shot
from mvfa.runs.cli import run
from mvfa.common.outputs import WriteFailed
from loss import MVFALoss
from mvfa.engine.training import AdapterOptimizers, train_step

FEATURES = [3, 6, 9, 12]
SIZE = 28  # the smallest input the tiny CLIP (patch 14) takes


@pytest.fixture(scope='module')
def clean_data(tmp_path_factory) -> Path:
    """Synthetic 32 px data of all six objects: 3 test and 2 valid images per class, 1- and 2-shot lists."""
    return generate(tmp_path_factory.mktemp('clean'), size=32, n_test=3, n_valid=2, shots=(1, 2), iterations=1)


@pytest.fixture()
def data(clean_data, tmp_path) -> Path:
    """A copy of the clean data that a test may break."""
    return Path(shutil.copytree(clean_data, tmp_path / 'data'))


def flags(data: Path, save: Path, obj: str = 'Liver') -> List[str]:
    return ['--model_name', 'tiny-clip', '--pretrain', 'none', '--features_list', *map(str, FEATURES),
            '--device', 'cpu', '--img_size', str(SIZE), '--data_path', str(data), '--obj', obj,
            '--save_path', str(save), '--fewshot_seed_dir', str(data / 'fewshot_seed'), '--shot', '1',
            '--iterate', '0', '--batch_size', '11']


def zero_shot_flags(data: Path, save: Path, obj: str = 'Liver') -> List[str]:
    few_shot_only = {'--fewshot_seed_dir': 1, '--shot': 1, '--iterate': 1}
    argv, skip = [], 0
    for flag in flags(data, save, obj):
        if skip:
            skip -= 1
        elif flag in few_shot_only:
            skip = few_shot_only[flag]
        else:
            argv.append(flag)
    return argv


@pytest.fixture(scope='module')
def tiny_clip():
    return create_model('tiny-clip', SIZE, None)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# ---------------------------------------------------------------- 1. bad data: one line, before the model

def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _empty(folder: Path) -> None:
    for file in folder.iterdir():
        file.unlink()


def _resize_mask(mask: Path) -> None:
    Image.open(mask).resize((16, 16)).save(mask)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def _first_seeded_normal(data: Path) -> Path:
    line = (data / 'fewshot_seed' / 'Liver' / '1-shot.txt').read_text().splitlines()[1]
    assert line.startswith('n-0:')
    return data / 'Liver_AD' / 'valid' / 'good' / 'img' / line.split()[1]


LIVER = Path('Liver_AD')
BAD_DATA = {
    # case: (script, break the data (gets the data folder), extra flags, words the message must hold)
    'unknown object': (train_few, lambda d: None, ['--obj', 'Kidney'], "unknown --obj 'Kidney'"),
    'object folder missing': (test_zero, lambda d: _remove(d / LIVER), [], 'Liver_AD does not exist'),
    'split folder missing': (train_few, lambda d: _remove(d / LIVER / 'test' / 'good'), [], 'missing folder'),
    'empty folder': (test_few, lambda d: _empty(d / LIVER / 'test' / 'Ungood' / 'img'), [], 'holds no images'),
    'mask missing': (train_few, lambda d: _remove(_first(d / LIVER / 'test' / 'Ungood' / 'anomaly_mask')), [],
                     'has no mask'),
    'mask of another size': (test_zero, lambda d: _resize_mask(_first(d / LIVER / 'test' / 'Ungood' / 'anomaly_mask')),
                             [], 'is 16x16 px but its image'),
    'corrupt image': (train_few, lambda d: _truncate(_first(d / LIVER / 'test' / 'good' / 'img')), [],
                      'cannot read image'),
    'corrupt support mask': (test_few, lambda d: _truncate(_first(d / LIVER / 'valid' / 'Ungood' / 'anomaly_mask')),
                             [], 'cannot read image'),
    'corrupt source object image': (train_zero, lambda d: _truncate(_first(d / 'Chest_AD' / 'test' / 'Ungood' / 'img')),
                                    [], 'Chest_AD'),
    'shot larger than the support': (train_few, lambda d: None, ['--shot', '5'], '--shot 5 needs 5'),
    'seed list names a missing file': (test_few, lambda d: _remove(_first_seeded_normal(d)), [],
                                       'names images missing'),
    'seed list has no such draw': (train_few, lambda d: None, ['--iterate', '7'], "has no line 'n-7:'"),
    'image size not positive': (test_zero, lambda d: None, ['--img_size', '0'], '--img_size must be a positive'),
}


@pytest.mark.parametrize('case', BAD_DATA)
def test_bad_data_is_one_line_before_the_model_is_built(case, data, tmp_path, capsys, monkeypatch):
    script, damage, extra, words = BAD_DATA[case]
    damage(data)

    def no_model(*args, **kwargs):
        raise AssertionError('the model was built before the data was checked')
    monkeypatch.setattr(mvfa.engine.session, 'create_model', no_model)
    save = tmp_path / 'ckpt'
    argv = (zero_shot_flags if script in (train_zero, test_zero) else flags)(data, save)
    assert run(script.main, argv + extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith('error: ') and words in err, err
    assert not save.exists()


def test_a_corrupt_file_is_named_with_its_path(data, tmp_path, capsys):
    broken = _first(data / LIVER / 'test' / 'Ungood' / 'img')
    _truncate(broken)
    assert run(train_few.main, flags(data, tmp_path / 'ckpt')) == 2
    assert str(broken) in capsys.readouterr().err


def test_clean_data_passes_and_every_file_is_counted(clean_data):
    from dataset.validate import validate_leave_one_out, validate_object
    assert validate_object(clean_data, 'Liver', SIZE, shot=2, iterate=0, seed_dir=clean_data / 'fewshot_seed') == 6 + 9
    assert validate_object(clean_data, 'Chest') == 6  # the test split only, no masks
    assert validate_leave_one_out(clean_data, 'Liver') == 3 * 9 + 3 * 6  # three objects with masks


def test_normal_only_needs_no_abnormal_support(data):
    from dataset.validate import validate_object
    _remove(data / LIVER / 'valid' / 'Ungood')
    checked = validate_object(data, 'Liver', shot=1, iterate=0, seed_dir=data / 'fewshot_seed', normal_only=True)
    assert checked == 3 + 3 * 2 + 2  # test: 3 normal, 3 abnormal with masks; valid: the 2 normal images only


# ---------------------------------------------------------------- 2. image modes and mask encodings

GRAY = (np.arange(32 * 32).reshape(32, 32) * 7 % 256).astype(np.uint8)
IMAGE_MODES = {
    'grayscale': lambda: Image.fromarray(GRAY),
    'RGB': lambda: Image.fromarray(GRAY).convert('RGB'),
    'RGBA': lambda: Image.fromarray(GRAY).convert('RGBA'),
    'gray+alpha': lambda: Image.fromarray(GRAY).convert('LA'),
    'palette': lambda: Image.fromarray(GRAY).convert('P'),
    '16-bit': lambda: Image.fromarray(GRAY.astype(np.uint16) * 257),
}


@pytest.mark.parametrize('mode', IMAGE_MODES)
def test_every_image_mode_loads_as_three_channels_in_0_1(mode, tmp_path):
    reference = tmp_path / 'reference.png'
    Image.fromarray(GRAY).save(reference)
    path = tmp_path / f'{mode}.png'
    IMAGE_MODES[mode]().save(path)
    loaded = load_image(path, SIZE)
    assert loaded.shape == (3, SIZE, SIZE) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, load_image(reference, SIZE), atol=0, rtol=0)


def test_jpeg_loads_like_its_png(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / 'a.png')
    Image.fromarray(GRAY).convert('RGB').save(tmp_path / 'a.jpg', quality=100)
    loaded = load_image(tmp_path / 'a.jpg', SIZE)
    assert loaded.shape == (3, SIZE, SIZE) and 0 <= loaded.min() and loaded.max() <= 1
    assert (loaded - load_image(tmp_path / 'a.png', SIZE)).abs().mean() < 0.02


SQUARE = np.zeros((32, 32), np.uint8)
SQUARE[8:20, 4:24] = 1
MASK_ENCODINGS = {
    '0/1': lambda: Image.fromarray(SQUARE),
    '0/255': lambda: Image.fromarray(SQUARE * 255),
    '1-bit': lambda: Image.fromarray(SQUARE * 255).convert('1'),
    'RGB 0/255': lambda: Image.fromarray(SQUARE * 255).convert('RGB'),
    '16-bit 0/1': lambda: Image.fromarray(SQUARE.astype(np.uint16)),
    '16-bit 0/65535': lambda: Image.fromarray(SQUARE.astype(np.uint16) * 65535),
}


@pytest.mark.parametrize('encoding', MASK_ENCODINGS)
def test_every_mask_encoding_gives_the_same_0_1_mask(encoding, tmp_path):
    path = tmp_path / 'mask.png'
    MASK_ENCODINGS[encoding]().save(path)
    mask = load_mask(path, 32)
    assert mask.shape == (1, 32, 32)
    np.testing.assert_array_equal(mask[0].numpy(), SQUARE.astype(np.float32))


# ---------------------------------------------------------------- 3. checkpoints

@pytest.fixture()
def adapted(tiny_clip) -> MultiLevelAdaptedCLIP:
    return MultiLevelAdaptedCLIP(tiny_clip, FEATURES)


@pytest.mark.parametrize('failure, raised', [(OSError(errno.ENOSPC, 'No space left on device'), WriteFailed),
                                             (KeyboardInterrupt(), KeyboardInterrupt)])
def test_a_failed_save_leaves_the_previous_checkpoint_and_sidecar_intact(failure, raised, adapted, tmp_path,
                                                                          monkeypatch):
    """The sidecar's write fails half-way, after the checkpoint's: neither file is replaced, no temporary stays."""
    path = tmp_path / 'Liver.pth'
    save_adapters(adapted, path, {'step': 'epoch 0'})
    before = {name: (tmp_path / name).read_bytes() for name in ('Liver.pth', 'Liver.json')}
    torch.nn.init.ones_(adapted.det_adapters[0].fc1[0].weight)
    real_write = outputs.write_whole

    def write_half_then_fail(target, data):
        if target.name.startswith('.Liver.json.'):
            real_write(target, data[:len(data) // 2])
            raise failure
        real_write(target, data)
    monkeypatch.setattr(outputs, 'write_whole', write_half_then_fail)
    with pytest.raises(raised):
        save_adapters(adapted, path, {'step': 'epoch 1'})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left behind


def test_a_checkpoint_with_other_levels_names_the_flag(adapted, tiny_clip, tmp_path):
    save_adapters(adapted, tmp_path / 'Liver.pth')
    with pytest.raises(CheckpointError, match=r'4 seg_adapters levels, the model 3 \(--features_list 3 6 9\)'):
        load_adapters(MultiLevelAdaptedCLIP(tiny_clip, [3, 6, 9]), tmp_path / 'Liver.pth')


def test_a_checkpoint_of_another_width_names_the_tensor_and_shapes(adapted, tmp_path):
    path = tmp_path / 'Liver.pth'
    save_adapters(adapted, path)
    checkpoint = read_checkpoint(path)
    checkpoint['det_adapters']['0.fc1.0.weight'] = torch.zeros(8, 1024)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r'det_adapters\.0\.fc1\.0\.weight has shape \(8, 1024\), the model'):
        load_adapters(adapted, path)


# ---------------------------------------------------------------- 4. NaN losses and Ctrl-C

def test_a_nan_loss_skips_the_step(adapted):
    """The optimizers skip the step on the device: no weight moves and Adam's step count stays."""
    images, labels = torch.rand(2, 3, SIZE, SIZE), torch.tensor([0.0, 1.0])
    optimizers = AdapterOptimizers(adapted, 1e-3)
    text = torch.nn.functional.normalize(torch.randn(96, 2), dim=0)  # (embed_dim, normal/abnormal)
    train_step(adapted, optimizers, MVFALoss(adapted.config), images, labels, None, text)
    before = {name: value.clone() for name, value in adapted.det_adapters.state_dict().items()}
    steps_before = [state['step'].item() for state in optimizers.det.state.values()]
    seg_before = {name: value.clone() for name, value in adapted.seg_adapters.state_dict().items()}
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[1, :, :10, :10] = 1

    def nan_loss(*args):
        return MVFALoss(adapted.config)(*args) * float('nan')
    loss = train_step(adapted, optimizers, nan_loss, images, labels, None, text)
    assert torch.isnan(loss)
    for name, value in adapted.det_adapters.state_dict().items():
        assert torch.equal(value, before[name])
    assert steps_before and set(steps_before) == {1.0}
    assert [state['step'].item() for state in optimizers.det.state.values()] == steps_before
    # With masks too (both optimizers would step): nothing moves.
    assert torch.isnan(train_step(adapted, optimizers, nan_loss, images, labels, masks, text))
    for adapters, kept in ((adapted.det_adapters, before), (adapted.seg_adapters, seg_before)):
        for name, value in adapters.state_dict().items():
            assert torch.equal(value, kept[name])


def test_training_warns_with_the_count_of_skipped_steps(data, tmp_path, monkeypatch, capsys):
    calls = []

    class FirstStepNaN(MVFALoss):
        def __call__(self, *args):
            calls.append(1)
            loss = super().__call__(*args)
            return loss * float('nan') if len(calls) == 1 else loss
    monkeypatch.setattr(few_shot, 'MVFALoss', FirstStepNaN)
    save = tmp_path / 'ckpt'
    assert run(train_few.main, flags(data, save) + ['--epoch', '1']) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if 'not finite' in line]
    assert skipped == ['warning: epoch 0: skipped 1 steps whose loss was not finite']
    assert (save / 'Liver.pth').is_file()


def interrupt_at_step(module, monkeypatch, at: int, on_interrupt=lambda: None) -> None:
    """Make the `at`-th training step of `module` (0-based) raise KeyboardInterrupt, as Ctrl-C would."""
    real_step, calls = module.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) > at:
            on_interrupt()
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(module, 'train_step', step)


def test_ctrl_c_before_any_checkpoint_says_so(data, tmp_path, monkeypatch, capsys):
    interrupt_at_step(few_shot, monkeypatch, at=0)
    save = tmp_path / 'ckpt'
    assert run(train_few.main, flags(data, save) + ['--epoch', '2']) == 130
    assert last_line(capsys.readouterr().err) == 'interrupted: no checkpoint was saved yet'
    assert not (save / 'Liver.pth').exists()


def test_ctrl_c_keeps_the_best_checkpoint_and_resume_continues_as_if_uninterrupted(data, tmp_path, monkeypatch,
                                                                                   capsys):
    """Interrupted in epoch 1, then resumed: the same adapters as two uninterrupted epochs."""
    save = tmp_path / 'interrupted'
    checkpoint, kept = save / 'Liver.pth', []
    interrupt_at_step(few_shot, monkeypatch, at=2, on_interrupt=lambda: kept.append(checkpoint.read_bytes()))
    assert run(train_few.main, flags(data, save) + ['--epoch', '2']) == 130
    assert last_line(capsys.readouterr().err) == f'interrupted: the best checkpoint so far is intact at {checkpoint}'
    assert checkpoint.read_bytes() == kept[0]
    monkeypatch.undo()

    assert run(train_few.main, flags(data, save) + ['--epoch', '2', '--learning_rate', '0.01', '--resume']) == 2
    assert 'made with --learning_rate 0.001, this run has 0.01' in capsys.readouterr().err
    resumed = train_few.main(flags(data, save) + ['--epoch', '2', '--resume'])
    assert 'resuming from' in capsys.readouterr().out
    straight = train_few.main(flags(data, tmp_path / 'straight') + ['--epoch', '2'])
    assert resumed.image_auroc == straight.image_auroc and resumed.pixel_auroc == straight.pixel_auroc
    for key, tensors in read_checkpoint(tmp_path / 'straight' / 'Liver.pth').items():
        for name, tensor in tensors.items():
            torch.testing.assert_close(read_checkpoint(checkpoint)[key][name], tensor, atol=0, rtol=0)


@pytest.mark.parametrize('at, hint', [(0, None), (2, 'the same command with --resume continues after epoch 0')])
def test_ctrl_c_says_how_to_resume_once_an_epoch_is_saved(at, hint, data, tmp_path, monkeypatch, capsys):
    """Two steps per epoch: step 2 is in epoch 1, after epoch 0 was saved for --resume."""
    interrupt_at_step(few_shot, monkeypatch, at=at)
    save = tmp_path / 'ckpt'
    assert run(train_few.main, flags(data, save) + ['--epoch', '2']) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith('interrupted: ')
    if hint is None:
        assert '--resume' not in '\n'.join(lines)
    else:
        assert lines[-2] == f'{hint} (from {save / "Liver.resume.pt"})'


def test_ctrl_c_in_zero_shot_training_keeps_the_checkpoint(data, tmp_path, monkeypatch, capsys):
    save = tmp_path / 'ckpt'
    models = []

    def interrupted(model, *args, **kwargs):  # the first step: the first evaluation has already saved a checkpoint
        models.append(model)
        raise KeyboardInterrupt
    monkeypatch.setattr(zero_shot, 'train_step', interrupted)
    assert run(train_zero.main, zero_shot_flags(data, save) + ['--epoch', '1']) == 130
    intact = f'interrupted: the best checkpoint so far is intact at {save / "Liver.pth"}'
    assert last_line(capsys.readouterr().err) == intact
    # The checkpoint holds exactly the adapters that were scored: those of the model, untouched by any step.
    saved = read_checkpoint(save / 'Liver.pth')
    for key in ('seg_adapters', 'det_adapters'):
        expected = getattr(models[0], key).state_dict()
        assert set(saved[key]) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(saved[key][name], tensor), (key, name)


def test_zero_shot_resume_continues_as_if_uninterrupted(data, tmp_path, monkeypatch, capsys):
    """Interrupted at the first step of epoch 1 (after its first scoring), then resumed: the same selected step,
    AUROCs and adapters (selected and final) as two uninterrupted epochs; epoch 1's batch order comes from the
    restored shuffler."""
    steps_per_epoch = len(MedTrainDataset(data, 'Liver', SIZE).batches(11, random.Random()))  # --batch_size 11
    save = tmp_path / 'interrupted'
    resume_file = save / 'Liver.resume.pt'
    interrupt_at_step(zero_shot, monkeypatch, at=steps_per_epoch)
    # --resume without a resume state starts at epoch 0, so the same command serves the first run.
    assert run(train_zero.main, zero_shot_flags(data, save) + ['--epoch', '2', '--resume']) == 130
    captured = capsys.readouterr()
    assert f'no resume state at {resume_file}: starting at epoch 0' in captured.out
    hint = f'the same command with --resume continues at epoch 1 batch 0 (from {resume_file})'
    assert captured.err.strip().splitlines()[-2] == hint
    monkeypatch.undo()

    assert run(train_zero.main, zero_shot_flags(data, save) + ['--epoch', '2', '--learning_rate', '0.01',
                                                                 '--resume']) == 2
    assert 'made with --learning_rate 0.0001, this run has 0.01' in capsys.readouterr().err
    resumed = train_zero.main(zero_shot_flags(data, save) + ['--epoch', '2', '--resume'])
    assert f'resuming from {resume_file} at epoch 1 batch 0' in capsys.readouterr().out
    straight_save = tmp_path / 'straight'
    straight = train_zero.main(zero_shot_flags(data, straight_save) + ['--epoch', '2'])
    assert (resumed.image_auroc, resumed.pixel_auroc) == (straight.image_auroc, straight.pixel_auroc)
    assert read_sidecar(save / 'Liver.pth')['step'] == read_sidecar(straight_save / 'Liver.pth')['step']
    # The selected adapters, and the final ones, which the last resume state holds.
    for name in ('Liver.pth', 'Liver.resume.pt'):
        expected, got = read_checkpoint(straight_save / name), read_checkpoint(save / name)
        for key in ADAPTER_KEYS:
            for tensor_name, tensor in expected[key].items():
                torch.testing.assert_close(got[key][tensor_name], tensor, atol=0, rtol=0)


# ---------------------------------------------------------------- 5. CLIP weights

def test_a_missing_weights_file_says_so_and_the_script_names_the_flag(data, tmp_path, capsys):
    """The model builder knows no command line; the script's one line says which flag to change."""
    missing = tmp_path / 'missing.pt'
    with pytest.raises(WeightsError, match='does not exist: put the CLIP weights there$') as raised:
        create_model('tiny-clip', SIZE, str(missing))
    assert raised.value.argument == 'pretrained' and '--' not in str(raised.value)
    argv = flags(data, tmp_path / 'ckpt')
    argv[argv.index('--pretrain') + 1] = str(missing)
    assert run(train_few.main, argv + ['--epoch', '1']) == 2
    assert last_line(capsys.readouterr().err) == (
        f'error: weights file {missing} does not exist: put the CLIP weights there; pass --pretrain a weights '
        f"file, openai (read from {LOCAL_WEIGHTS['ViT-L-14-336']} or downloaded) or none")


def test_truncated_weights_say_download_again(tiny_clip, tmp_path):
    path = tmp_path / 'tiny.pt'
    torch.save(tiny_clip.state_dict(), path)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(WeightsError, match='damaged or truncated; download it again'):
        create_model('tiny-clip', SIZE, str(path))


def test_no_network_names_where_to_put_the_openai_weights(data, tmp_path, monkeypatch, capsys):
    if LOCAL_WEIGHTS['ViT-L-14-336'].is_file():
        pytest.skip('the OpenAI weights are present, so nothing is downloaded')

    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(open_clip, 'download_pretrained', offline)
    argv = zero_shot_flags(data, tmp_path / 'ckpt')
    argv[argv.index('tiny-clip')], argv[argv.index('none')] = 'ViT-L-14-336', 'openai'
    assert run(train_zero.main, argv + ['--epoch', '1']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'URLError' in err
    assert 'CLIP/ckpt/ViT-L-14-336px.pt' in err


def test_an_openai_style_torchscript_archive_loads(tiny_clip, tmp_path):
    """OpenAI's .pt files are TorchScript archives with the CLIP's keys plus three metadata entries."""

    class OpenAIStyle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ('visual', 'transformer', 'token_embedding', 'ln_final'):
                setattr(self, name, getattr(tiny_clip, name))
            for name in ('positional_embedding', 'text_projection', 'logit_scale'):
                setattr(self, name, torch.nn.Parameter(getattr(tiny_clip, name).detach().clone()))
            for name, value in (('input_resolution', SIZE), ('context_length', 77), ('vocab_size', 49408)):
                self.register_buffer(name, torch.tensor(value))

        def forward(self, image: torch.Tensor, text: torch.Tensor):
            return self.visual(image), self.token_embedding(text) + self.positional_embedding

    with warnings.catch_warnings():  # tracing and jit deprecation notices
        warnings.simplefilter('ignore')
        archive = torch.jit.trace(OpenAIStyle(), (torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 77, dtype=torch.long)))
        torch.jit.save(archive, str(tmp_path / 'tiny-openai.pt'))
    loaded = create_model('tiny-clip', SIZE, str(tmp_path / 'tiny-openai.pt'))
    for name, tensor in tiny_clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
