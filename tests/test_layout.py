"""The code's shape: no import cycles between the project's modules, no import from a layer above, and the
open_clip structure the model relies on (plain ViT blocks that the fused attention path computes) is the
one installed."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import open_clip
import torch
from open_clip.model import CLIP

from CLIP import MultiLevelAdaptedCLIP
from CLIP.factory import load_model_config

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {'tests', '.venv', '.git'}


def module_name(path: Path) -> str:
    return '.'.join(path.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')


def project_imports() -> Dict[str, Set[str]]:
    """module -> the project modules it imports (relative imports resolved)."""
    files = [p for p in ROOT.rglob('*.py') if not SKIPPED & set(p.relative_to(ROOT).parts)]
    modules = {module_name(p): p for p in files}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f'{base}.{alias.name}' for alias in node.names]
            else:
                continue
            edges |= {target for target in targets if target in modules and target != name}
        graph[name] = edges
    return graph


def test_the_project_has_no_import_cycles():
    graph = project_imports()
    assert {'mvfa.method.scoring', 'mvfa.engine.evaluation', 'CLIP.adapter', 'train_few'} <= set(graph)
    assert 'mvfa.method.scoring' in graph['mvfa.engine.evaluation']
    visiting, done = set(), set()

    def visit(module: str, path: tuple) -> None:
        assert module not in visiting, f'import cycle: {" -> ".join(path + (module,))}'
        if module in done:
            return
        visiting.add(module)
        for imported in sorted(graph[module]):
            visit(imported, path + (module,))
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


# The layers from the bottom up, by module prefix: a module imports only from its own layer and those below.
# BMAD's object names and the intensity windows are torch-free facts that the flag registry reads.
LAYERS = (
    ('mvfa.common', 'dataset.objects', 'dataset.windows'),
    ('CLIP', 'dataset', 'prompt'),
    ('mvfa.method', 'loss', 'utils'),
    ('mvfa.engine',),
    ('mvfa.runs',),
    ('mvfa.studies',),
)
TOP = len(LAYERS)  # the commands (those run with `python -m` too), benchmarks/ and the mvfa package itself
COMMANDS = ('dataset.prepare', 'dataset.synthetic')


def layer_of(module: str) -> int:
    if module in COMMANDS:
        return TOP
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + '.')]
    return max(matches)[1] if matches else TOP


def test_no_module_imports_from_a_layer_above_it():
    graph = project_imports()
    assert layer_of('mvfa.common.flags') == 0 and layer_of('dataset.readers') == 1 and layer_of('train_few') == TOP
    upward = sorted(f'{module} ({layer_of(module)}) imports {imported} ({layer_of(imported)})'
                    for module, imports in graph.items() for imported in imports
                    if layer_of(imported) > layer_of(module) and imported != 'mvfa')
    assert upward == []


def test_vit_l_blocks_take_the_fused_attention_path():
    """open_clip's ViT-L-14-336 (built without memory on the meta device) has the plain attention
    blocks that `fused_block` computes: an open_clip that changed them would switch the fused
    path off without a word."""
    config = load_model_config('ViT-L-14-336')
    with torch.device('meta'):
        model = MultiLevelAdaptedCLIP(CLIP(**config), [6, 12, 18, 24])
    assert model.fused_attention
    assert len(model.image_encoder.transformer.resblocks) == 24


def test_requirements_bound_open_clip_to_the_tested_versions():
    line = next(line for line in (ROOT / 'requirements.txt').read_text().splitlines()
                if line.startswith('open_clip_torch'))
    upper = line.split('<')[1]
    installed = tuple(int(part) for part in open_clip.__version__.split('.')[:2])
    assert installed < tuple(int(part) for part in upper.split('.')[:2]), (line, open_clip.__version__)
