"""Importers of pretrained weights from other projects' files, each returning a :class:`LoadReport`.

* :func:`load_swinunetr`: MONAI's self-supervised Swin ViT (``model_swinvit.pt``) or a whole SwinUNETR /
  Universal-Model checkpoint into MoME's SwinUNETR (``MoMEConfig.backbone.encoder_weights`` / ``init_weights``);
* :func:`load_clip_text`: the text tower of a local CLIP folder (``TextConfig(model=<folder>)``);
* :func:`load_open_clip_text`: an open_clip / BiomedCLIP checkpoint's HF text encoder (``TextConfig.weights``);
* :func:`read_prompt_embeddings`: precomputed prompt embeddings for MoME (``MoMEConfig.prompt_embeddings``).

MedCLIP's Swin-T is read by :func:`medmoe.backbones.swin.load_backbone_weights`.
"""

from medmoe.weights.clip_text import is_clip_folder, load_clip_text
from medmoe.weights.files import read_state_dict
from medmoe.weights.monai_swin import load_swinunetr, swinunetr_key
from medmoe.weights.open_clip import load_open_clip_text, open_clip_text_key
from medmoe.weights.prompt_embeddings import PromptTable, read_prompt_embeddings
from medmoe.weights.report import LoadReport

__all__ = ["LoadReport", "PromptTable", "is_clip_folder", "load_clip_text", "load_open_clip_text", "load_swinunetr",
           "open_clip_text_key", "read_prompt_embeddings", "read_state_dict", "swinunetr_key"]
