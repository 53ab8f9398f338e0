"""Text tower: a Hugging Face encoder from a local directory, sentence + word outputs, prompt templates."""

from medmoe.text.config import TextConfig
from medmoe.text.tower import TextOutput, TextTower, minilm_path

__all__ = ["TextConfig", "TextOutput", "TextTower", "minilm_path"]
