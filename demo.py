"""Demo: MVFA end to end in a few minutes on a CPU, with synthetic data and a tiny random-weight CLIP.

For every object it trains and tests the adapters few-shot and zero-shot by calling the four
scripts in-process, scores the untrained adapters the same way, prints a table of both and writes
heatmaps. It shows the pipeline runs and learns; it measures nothing about the paper.

    python demo.py                               # all six objects, a few minutes on 2 CPU cores
    python demo.py --objects Brain Histopathology --epoch 3
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import test_few
import test_zero
import train_few
import train_zero
from dataset import synthetic
from dataset.objects import OBJECTS
from mvfa.runs.cli import parser, run
from mvfa.common.flags import FlagParser
from mvfa.common.outputs import Output, atomic_write, check_outputs, naming_command

if TYPE_CHECKING:
    from mvfa.engine.evaluation import Evaluation

# A 12-block CLIP with random weights: nothing to download, fast on a CPU.
TINY = 'tiny-clip'
TINY_MODEL = ['--model_name', TINY, '--pretrain', 'none', '--features_list', '3', '6', '9', '12']
HEADER = 'synthetic data, random CLIP weights: these numbers say nothing about the paper'
# Written beside the synthetic data: what it was generated with, and proof that the demo made the folder.
DATA_RECORD = 'synthetic.json'
SHOT = 4
REAL_RUN = """To run MVFA for real: put the BMAD data under data/ (see data/README.md) and the OpenAI
ViT-L-14-336 weights at CLIP/ckpt/ViT-L-14-336px.pt (or let open_clip download them), then, per
object (Brain, Liver, Retina_RESC, Retina_OCT2017, Chest, Histopathology):
    python train_few.py --obj Brain --shot 4
    python test_few.py --obj Brain --shot 4 --save_vis vis/few-shot
    python train_zero.py --obj Brain
    python test_zero.py --obj Brain --save_vis vis/zero-shot"""


@dataclass
class Row:
    obj: str
    setting: str
    trained: Evaluation
    untrained: Evaluation


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = FlagParser(description=__doc__)
    p.add_argument('--objects', nargs='+', default=list(OBJECTS), choices=OBJECTS,
                   help='objects to train and test (zero-shot training always reads the other five)')
    p.add('size', default=64)
    p.add('n_test', default=16, help='synthetic test images per class (good, Ungood)')
    p.add('epoch', default=5, help='training epochs, both settings (fewer make the untrained-vs-trained gap noisy)')
    p.add('img_size', default=112, help='model input side (a multiple of 14)')
    p.add('seed', help='seeds the random CLIP, the adapters and training')
    p.add('selection', choices=('test', 'last'),
          help="adapters kept by training: 'test' the best on the test set (the paper), 'last' the final")
    p.add_argument('--data_path', type=Path, default=Path('data/demo'), help='where the synthetic data goes')
    p.add_argument('--ckpt_path', type=Path, default=Path('ckpt/demo'), help='where the demo adapters go')
    p.add_argument('--out', type=Path, default=Path('vis/demo'), help='where the heatmaps go')
    return p.parse_args(argv)


def data_settings(size: int, n_test: int) -> Dict:
    """What the synthetic data is generated with, as its record holds it."""
    return {'size': size, 'n_test': n_test, 'n_valid': 2 * SHOT, 'shots': [SHOT]}


def data_is_ready(data_path: Path, settings: Dict) -> bool:
    """Whether the folder holds the synthetic data of `settings` already (then nothing is written there)."""
    record = data_path / DATA_RECORD
    return record.is_file() and json.loads(record.read_text(encoding='utf-8')) == settings


def prepare_data(data_path: Path, size: int, n_test: int) -> None:
    """Generate the synthetic data unless this folder already holds the same; all six objects,
    since zero-shot training reads every object but the target."""
    settings = data_settings(size, n_test)
    record = data_path / DATA_RECORD
    if data_is_ready(data_path, settings):
        print(f'using the synthetic data in {data_path}')
        return
    if record.is_file():
        # The record proves the demo made these folders: replace them so no image of the old size stays.
        for folder in [data_path / f'{obj}_AD' for obj in OBJECTS] + [data_path / 'fewshot_seed']:
            shutil.rmtree(folder, ignore_errors=True)
    elif data_path.exists() and any(data_path.iterdir()):
        raise SystemExit(f'error: {data_path} holds files the demo did not write: pick another --data_path')
    synthetic.main(['--out', str(data_path), '--size', str(size), '--n_test', str(n_test),
                    '--n_valid', str(settings['n_valid']), '--shots', str(SHOT), '--iterations', '1'])
    atomic_write(record, json.dumps(settings))


def save_untrained_adapters(folder: Path, objects: Sequence[str], model_flags: List[str]) -> None:
    """The adapters every training run starts from (the scripts seed, then build the model, as
    here), as `<folder>/<Obj>.pth` for the test scripts."""
    # Imported here, not at the top: --help answers without loading torch.
    from mvfa.engine.checkpoint import save_adapters
    from mvfa.common.flags import flag_values
    from mvfa.engine.session import Session
    args = parser('untrained adapters', obj=OBJECTS[0], save_path=str(folder), few_shot=False,
                  training=False).parse_args(model_flags)
    model = Session(args).load_model()
    for obj in objects:
        save_adapters(model, folder / f'{obj}.pth', {'untrained': True, 'flags': flag_values(args)})


def in_process(script: ModuleType, argv: List[str]) -> Evaluation:
    """Run a script's main; a failed write names the script's command line."""
    with naming_command(f'python {script.__name__}.py {" ".join(argv)}'):
        return script.main(argv)


def run_object(obj: str, args: argparse.Namespace, model_flags: List[str]) -> List[Row]:
    few_flags = model_flags + ['--obj', obj, '--shot', str(SHOT), '--iterate', '0',
                               '--fewshot_seed_dir', str(args.data_path / 'fewshot_seed')]
    zero_flags = model_flags + ['--obj', obj]
    untrained = ['--save_path', str(args.ckpt_path / 'untrained')]
    rows = []
    for setting, train, test, flags in (('few-shot', train_few, test_few, few_flags),
                                        ('zero-shot', train_zero, test_zero, zero_flags)):
        print(f'\n=== {obj}, {setting}: training {args.epoch} epoch(s), then testing ===')
        save_path = ['--save_path', str(args.ckpt_path / setting)]
        in_process(train, flags + save_path + ['--epoch', str(args.epoch), '--selection', args.selection])
        trained = in_process(test, flags + save_path + ['--save_vis', str(args.out / setting)])
        print(f'--- {obj}, {setting}: the untrained adapters ---')
        rows.append(Row(obj, setting, trained, in_process(test, flags + untrained)))
    return rows


def table(rows: Sequence[Row]) -> str:
    def auroc(value: Optional[float]) -> str:
        return '-' if value is None else f'{value:.3f}'

    lines = [f'Results ({HEADER})', '',
             f'{"object":<16}{"setting":<11}{"image AUROC":>13}{"pixel AUROC":>13}'
             f'{"untrained image":>17}{"untrained pixel":>17}']
    lines += [f'{r.obj:<16}{r.setting:<11}{auroc(r.trained.image_auroc):>13}{auroc(r.trained.pixel_auroc):>13}'
              f'{auroc(r.untrained.image_auroc):>17}{auroc(r.untrained.pixel_auroc):>17}' for r in rows]
    return '\n'.join(lines)


def verdict(rows: Sequence[Row], selection: str) -> str:
    trained = statistics.mean(r.trained.image_auroc for r in rows)
    untrained = statistics.mean(r.untrained.image_auroc for r in rows)
    outcome = 'beat' if trained > untrained else 'did not beat'
    kept = ('its best state on the test set, as the paper does' if selection == 'test'
            else 'its final state')
    return (f'Mean image AUROC: trained {trained:.3f}, untrained {untrained:.3f}: the learned adapters '
            f'{outcome} the untrained ones. (Training kept {kept}.)')


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    args = parse_args(argv)
    from mvfa.engine.session import check_image_size  # after parsing: --help answers without loading torch
    check_image_size(TINY, args.img_size)  # before the data is written
    places = [Output('--ckpt_path', args.ckpt_path), Output('--out', args.out)]
    if not data_is_ready(args.data_path, data_settings(args.size, args.n_test)):
        places.insert(0, Output('--data_path', args.data_path))
    check_outputs(places)
    prepare_data(args.data_path, args.size, args.n_test)
    model_flags = TINY_MODEL + ['--data_path', str(args.data_path), '--img_size', str(args.img_size),
                                '--seed', str(args.seed)]
    save_untrained_adapters(args.ckpt_path / 'untrained', args.objects, model_flags)
    rows = [row for obj in args.objects for row in run_object(obj, args, model_flags)]
    print('\n' + table(rows) + '\n\n' + verdict(rows, args.selection))
    print(f'\nHeatmaps (input | mask | anomaly map): {args.out}/few-shot and {args.out}/zero-shot\n\n{REAL_RUN}')
    return rows


if __name__ == '__main__':
    raise SystemExit(run(main))
