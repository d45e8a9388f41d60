"""The published AUROCs (%) that `reproduce.py` compares against, as data.

`paper`: Huang et al., "Adapting Visual-Language Models for Generalizable Anomaly Detection in
Medical Images", CVPR 2024, Table 1 (zero-shot) and Table 2 (few-shot, k = 4).
`rerun`: the authors' re-run with their released code, from their README.
Only zero-shot and 4-shot numbers were published; other shots have none.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

SOURCE = "Huang et al., CVPR 2024, Tables 1-2, and the authors' README"
SOURCES = ('paper', 'rerun')

# The paper's column names, in its column order.
PAPER_NAMES = {'Histopathology': 'HIS', 'Chest': 'ChestXray', 'Retina_OCT2017': 'OCT17',
               'Brain': 'BrainMRI', 'Liver': 'LiverCT', 'Retina_RESC': 'RESC'}

ImageAndPixel = Tuple[float, Optional[float]]  # image AUROC, pixel AUROC (None: no masks)

# (setting, shot) -> source -> object -> AUROCs; zero-shot has shot 0.
PUBLISHED: Dict[Tuple[str, int], Dict[str, Dict[str, ImageAndPixel]]] = {
    ('zero-shot', 0): {
        'paper': {'Histopathology': (77.90, None), 'Chest': (71.11, None), 'Retina_OCT2017': (95.40, None),
                  'Brain': (78.63, 90.27), 'Liver': (76.24, 97.85), 'Retina_RESC': (83.31, 92.05)},
        'rerun': {'Histopathology': (76.90, None), 'Chest': (71.11, None), 'Retina_OCT2017': (95.40, None),
                  'Brain': (79.80, 89.68), 'Liver': (81.18, 97.93), 'Retina_RESC': (88.99, 90.44)},
    },
    ('few-shot', 4): {
        'paper': {'Histopathology': (82.71, None), 'Chest': (81.95, None), 'Retina_OCT2017': (99.38, None),
                  'Brain': (92.44, 97.30), 'Liver': (81.18, 99.73), 'Retina_RESC': (96.18, 98.97)},
        'rerun': {'Histopathology': (82.71, None), 'Chest': (81.95, None), 'Retina_OCT2017': (99.38, None),
                  'Brain': (92.31, 97.30), 'Liver': (81.18, 99.69), 'Retina_RESC': (96.18, 98.97)},
    },
}


def published(setting: str, shot: int, source: str, obj: str) -> Optional[ImageAndPixel]:
    """The published (image, pixel) AUROCs in %, or None where nothing was published."""
    return PUBLISHED.get((setting, shot), {}).get(source, {}).get(obj)
