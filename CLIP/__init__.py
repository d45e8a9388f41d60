"""MVFA's CLIP: open_clip models built at MVFA's resolution, and the multi-level adapter around them."""
from .adapter import CLIP_Inplanted, ClipAdapter, MultiLevelAdaptedCLIP
from .factory import WeightsError, create_model

__all__ = ['CLIP_Inplanted', 'ClipAdapter', 'MultiLevelAdaptedCLIP', 'WeightsError', 'create_model']
