"""Build a frozen open_clip CLIP at the resolution MVFA runs at, with its weights.

MVFA runs OpenAI's ViT-L/14-336 at 240 px. The model is built from its open_clip config at the
requested size and the weights (trained at 336 px) are loaded with the positional embedding
resized, as the authors' code does.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Union

import open_clip
import torch
from open_clip.model import CLIP, resize_pos_embed

from mvfa.common.config import PAPER
from mvfa.common.errors import UserError

CLIP_DIR = Path(__file__).resolve().parent
# Where the authors' instructions put OpenAI's weights; used before any download.
LOCAL_WEIGHTS = {'ViT-L-14-336': CLIP_DIR / 'ckpt' / 'ViT-L-14-336px.pt'}
# Configs shipped with this repo, usable by name (e.g. the tiny random-weight demo model).
SHIPPED_CONFIGS = CLIP_DIR / 'model_configs'
# Metadata entries of OpenAI's TorchScript archives that are not weights.
NON_WEIGHT_KEYS = ('input_resolution', 'context_length', 'vocab_size')


class WeightsError(UserError):
    """The CLIP weights cannot be had or do not fit the model. `argument` names the `create_model` argument
    to change ('pretrained' or 'model_name'), so that a command line can say which of its flags that is."""

    def __init__(self, message: str, argument: Optional[str] = None) -> None:
        super().__init__(message)
        self.argument = argument


def load_model_config(model_name: str) -> Dict:
    """An open_clip model config from a JSON file path, a config shipped here, or open_clip's registry."""
    path = Path(model_name)
    if path.suffix != '.json':
        path = SHIPPED_CONFIGS / f'{model_name}.json'
    if path.is_file():
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise WeightsError(
            f"unknown model '{model_name}': give an open_clip model name (e.g. ViT-L-14-336) "
            f"or the path to a JSON config with embed_dim, vision_cfg and text_cfg")
    return config


def patch_size(config: Dict) -> int:
    """The side of the model's patches: the smallest input it takes (a smaller one fails deep inside the
    patch convolution)."""
    return config['vision_cfg']['patch_size']


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's released .pt files are TorchScript archives: zip files with serialized code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('constants.pkl') for name in archive.namelist())


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Weights from an OpenAI TorchScript archive or a (possibly wrapped) plain state dict, in fp32."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file {path} does not exist: put the CLIP weights there', 'pretrained')
    try:
        if is_torchscript_archive(path):
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's concern
                warnings.simplefilter('ignore')
                state_dict = torch.jit.load(str(path), map_location='cpu').state_dict()
        else:
            state_dict = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise WeightsError(
            f'cannot read CLIP weights {path} ({type(error).__name__}): the file is damaged or '
            f'truncated; download it again') from None
    if isinstance(state_dict, dict) and 'state_dict' in state_dict:
        state_dict = state_dict['state_dict']
    if not isinstance(state_dict, dict):
        raise WeightsError(f'{path} holds no state dict')
    return {key.removeprefix('module.'): value.float() for key, value in state_dict.items()
            if key not in NON_WEIGHT_KEYS}


def resolve_weights(model_name: str, pretrained: str) -> Path:
    """Path of the weights file that `pretrained` names, downloading OpenAI's weights if needed."""
    if pretrained.lower() != 'openai':
        return Path(pretrained)
    local = LOCAL_WEIGHTS.get(model_name)
    if local is not None and local.is_file():
        return local
    config = open_clip.get_pretrained_cfg(model_name, 'openai')
    if not config:
        raise WeightsError(f"open_clip has no 'openai' weights for '{model_name}'", 'pretrained')
    where = local or CLIP_DIR / 'ckpt' / os.path.basename(config['url'])
    try:
        return Path(open_clip.download_pretrained(config, prefer_hf_hub=False))
    except Exception as error:  # urllib, ssl and hub errors differ by platform
        raise WeightsError(
            f"cannot download OpenAI's {model_name} weights ({type(error).__name__}): download "
            f"{config['url']} and put it at {where}", 'pretrained') from None


def create_model(
    model_name: str,
    img_size: int = PAPER.img_size,
    pretrained: Optional[str] = 'openai',
    device: Union[str, torch.device] = 'cpu',
    quick_gelu: bool = False,
) -> CLIP:
    """A CLIP built at `img_size`, in eval mode, with every weight frozen.

    `model_name` is an open_clip name, the name of a config in CLIP/model_configs, or a JSON path.
    `pretrained` is 'openai', a checkpoint path (TorchScript archive or state dict, any
    resolution), or None for random weights. Exact GELU by default: the authors built the model
    from its config without `quick_gelu`, so their published numbers used GELU even with
    OpenAI's (QuickGELU-trained) weights.
    """
    config = load_model_config(model_name)
    if img_size < patch_size(config):
        raise ValueError(f'img_size {img_size} is smaller than the patch size of {model_name} '
                         f'({patch_size(config)} px)')
    if 'text_cfg' not in config or 'hf_model_name' in config['text_cfg'] or config.get('custom_text'):
        raise WeightsError(f"'{model_name}' is not a plain CLIP (ViT image tower, CLIP text tower)")
    config['vision_cfg']['image_size'] = img_size
    config['quick_gelu'] = quick_gelu
    # Weights first: a missing or damaged file is reported before a large model is built.
    state_dict = read_state_dict(resolve_weights(model_name, pretrained)) if pretrained else None
    model = CLIP(**config)
    if state_dict is not None:
        resize_pos_embed(state_dict, model)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            first_problem = str(error).splitlines()[1].strip() if '\n' in str(error) else str(error)
            raise WeightsError(
                f"weights {pretrained} do not fit model '{model_name}' ({first_problem})", 'model_name') from None
    model.requires_grad_(False)
    return model.to(device).eval()
