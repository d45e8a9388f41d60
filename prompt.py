"""The text side of MVFA: the prompt ensemble that describes a normal and an abnormal image."""
from __future__ import annotations

import re
from typing import Dict, List, Union

import open_clip
import torch
from open_clip.model import CLIP

# What the prompts call each object (the authors' names; the two retinal sets share one).
REAL_NAME: Dict[str, str] = {
    'Brain': 'Brain', 'Liver': 'Liver', 'Retina_RESC': 'retinal OCT', 'Chest': 'Chest X-ray film',
    'Retina_OCT2017': 'retinal OCT', 'Histopathology': 'histopathological image',
}

# A category name as MVTec AD and VisA spell them: lower case, '_' between words, maybe a number
# that counts variants of one object (VisA's pcb1..pcb4, macaroni1, macaroni2), not a word of it.
CATEGORY_NAME = re.compile(r'([a-z][a-z_]*?)\d*')


def prompt_name(obj: str) -> str:
    """What the prompts call `obj`: a BMAD object's name from REAL_NAME; a category name
    (CATEGORY_NAME: MVTec AD's `metal_nut`, VisA's `pcb1`) with '_' as a space and its variant
    number dropped ('metal nut', 'pcb'); any other text as given ('brain MRI', 'T2')."""
    if obj in REAL_NAME:
        return REAL_NAME[obj]
    category = CATEGORY_NAME.fullmatch(obj)
    return category.group(1).replace('_', ' ') if category else obj


NORMAL_STATES: List[str] = [
    '{}', 'flawless {}', 'perfect {}', 'unblemished {}', '{} without flaw', '{} without defect',
    '{} without damage',
]
ABNORMAL_STATES: List[str] = [
    'damaged {}', 'broken {}', '{} with flaw', '{} with defect', '{} with damage',
]
# The 35 templates the authors' encoder uses, in their order (their prompt.py lists others it never reads).
TEMPLATES: List[str] = [
    'a bad photo of a {}.', 'a low resolution photo of the {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a bright photo of a {}.', 'a dark photo of the {}.',
    'a photo of my {}.', 'a photo of the cool {}.', 'a close-up photo of a {}.',
    'a black and white photo of the {}.', 'a bright photo of the {}.', 'a cropped photo of a {}.',
    'a jpeg corrupted photo of a {}.', 'a blurry photo of the {}.', 'a photo of the {}.',
    'a good photo of the {}.', 'a photo of one {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'a low resolution photo of a {}.', 'a photo of a large {}.',
    'a blurry photo of a {}.', 'a jpeg corrupted photo of the {}.', 'a good photo of a {}.',
    'a photo of the small {}.', 'a photo of the large {}.', 'a black and white photo of a {}.',
    'a dark photo of a {}.', 'a photo of a cool {}.', 'a photo of a small {}.',
    'there is a {} in the scene.', 'there is the {} in the scene.', 'this is a {} in the scene.',
    'this is the {} in the scene.', 'this is one {} in the scene.',
]
# Columns of the text features: image scores read the abnormal one.
NORMAL_COLUMN, ABNORMAL_COLUMN = 0, 1


def prompt_sentences(name: str) -> List[List[str]]:
    """Every sentence of the ensemble for `name`: [normal sentences, abnormal sentences]."""
    return [[template.format(state.format(name)) for state in states for template in TEMPLATES]
            for states in (NORMAL_STATES, ABNORMAL_STATES)]


def encode_text_with_prompt_ensemble(clip_model: CLIP, obj: str, device: Union[str, torch.device]) -> torch.Tensor:
    """Text features (embed_dim, 2), columns (normal, abnormal), for an object or any free-text name.

    `obj` is named by `prompt_name`, so 'Chest', 'Chest X-ray film' and 'metal_nut' all work. Each
    sentence embedding is L2-normalised, averaged per state and normalised again.
    """
    name = prompt_name(obj)
    context_length = clip_model.context_length
    features = []
    for sentences in prompt_sentences(name):
        tokens = open_clip.tokenize(sentences, context_length=context_length).to(device)
        embeddings = clip_model.encode_text(tokens)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        features.append(mean / mean.norm())
    return torch.stack(features, dim=1)
