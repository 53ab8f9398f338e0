"""What the page calls: the loaded models and index, one lock per model, folders for results.

:class:`Services` holds no Gradio object, so the tabs' work is tested as plain calls; :mod:`medmoe.serve.app`
wires its methods to the page. Search and classification take lists of requests (``search_many``,
``classify_many``): the page hands them the requests that queued while the model was busy, and the model
encodes their texts and images as one batch each.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.serve.classify import Classifier, ClassifyResult, answer_each
from medmoe.serve.results import KeptViews, ResultFolders
from medmoe.serve.search import SearchResult, Thumbnails, check_query, find_hits, hits_result
from medmoe.serve.segment import SegView, gather_prompts, segment_upload
from medmoe.serve.uploads import UploadLimits, display_name, uploaded_file

logger = logging.getLogger(__name__)


def named_after_upload(err: MedMoEError, path: Path) -> MedMoEError:
    """``err`` with the server's path of an upload replaced by the file's own name in its message."""
    text = str(err)
    if str(path) not in text:
        return err
    return type(err)(text.replace(str(path), display_name(path)))


def _one(answers: list):
    """The single answer of a one-request batch, raised when it is an error."""
    if isinstance(answers[0], Exception):
        raise answers[0]
    return answers[0]


class Services:
    """The page's back end.

    Args:
        model: a MedMoE model (Search and Classify), or None.
        seg_model: a MoME model (Segment), or None.
        index: a :class:`medmoe.align.index.SearchIndex` built with ``model`` (Search), or None.
        index_root: folder that relative image paths of the index are tried under.
        device: where the models run.
        limits: what uploads are accepted.
        workdir: scratch folder for results (a new temporary folder by default, removed by :meth:`close`).
    """

    def __init__(self, model: nn.Module | None = None, seg_model: nn.Module | None = None, index=None, *,
                 index_root: Path | None = None, device: torch.device | str = "cpu",
                 limits: UploadLimits | None = None, workdir: Path | None = None) -> None:
        if index is not None and model is None:
            raise InvalidInputError("a search index needs the MedMoE model it was built with (--model)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.seg_model = seg_model.to(self.device).eval() if seg_model is not None else None
        self.index = index
        self.index_root = index_root
        self.limits = limits or UploadLimits()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="medmoe-serve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.results = ResultFolders(self.workdir / "results")
        self.views = KeptViews()
        self.thumbnails = Thumbnails()
        self.classifier = Classifier(self.model) if self.model is not None else None
        self._model_lock = threading.Lock()
        self._seg_lock = threading.Lock()

    # ------------------------------------------------------------------ what the page offers
    @property
    def can_search(self) -> bool:
        return self.index is not None

    @property
    def can_classify(self) -> bool:
        return self.model is not None

    @property
    def can_segment(self) -> bool:
        return self.seg_model is not None

    def seg_classes(self) -> list[str]:
        """The classes the Segment tab offers: the model's trained classes (else its class set)."""
        from medmoe.seg.prompts import model_class_names

        return model_class_names(self.seg_model)[0] if self.seg_model is not None else []

    # ------------------------------------------------------------------ the tabs' work
    def search(self, query: str, k: int = 12) -> SearchResult:
        return _one(self.search_many([(query, k)]))

    def search_many(self, requests: Sequence[tuple[str, int]]) -> list[SearchResult | MedMoEError]:
        """The answer to each ``(query, k)``, or its medmoe error (an empty query, k out of range); the
        queries are encoded as one batch."""
        if not self.can_search:
            raise InvalidInputError("no index loaded: start `medmoe serve` with --index IDX")
        return answer_each(requests, check_query, self._search_checked)

    def _search_checked(self, queries: list[tuple[str, int]]) -> list[SearchResult]:
        with self._model_lock, torch.no_grad():
            hits = find_hits(self.model, self.index, queries)
        return [hits_result(found, self.index_root, self.thumbnails) for found in hits]

    def classify(self, upload, classes: str, text: str = "") -> ClassifyResult:
        return _one(self.classify_many([(upload, classes, text)]))

    def classify_many(self, requests: Sequence[tuple[object, str, str]]) -> list[ClassifyResult | MedMoEError]:
        """The answer to each ``(upload, classes, text)``, or its medmoe error (a bad upload, a bad class
        list); the images are encoded as one batch, and so are the texts."""
        if not self.can_classify:
            raise InvalidInputError("no MedMoE model loaded: start `medmoe serve` with --model M")
        return answer_each(requests, lambda upload, classes, text: (
            uploaded_file(upload, self.limits, what="an image (PNG, JPEG, DICOM)"), classes, text),
            self._classify_checked)

    def _classify_checked(self, checked: list[tuple[Path, str, str]]) -> list[ClassifyResult | MedMoEError]:
        with self._model_lock:
            found = self.classifier.classify_many(checked)
        return [named_after_upload(answer, path) if isinstance(answer, MedMoEError) else answer
                for answer, (path, _, _) in zip(found, checked)]

    def segment(self, upload, selected: list[str] | None, free_text: str = "", fast: bool = False, *,
                out_dir: Path | None = None) -> SegView:
        """Segment an uploaded CT. Its label map and summary go to ``out_dir``, or to a new result folder,
        removed a couple of minutes after the call (the page has copied them by then)."""
        if not self.can_segment:
            raise InvalidInputError("no MoME model loaded: start `medmoe serve` with --seg-model S")
        prompts = gather_prompts(selected, free_text)
        path = uploaded_file(upload, self.limits, what="a CT (.nii, .nii.gz or a .zip of a DICOM series)")
        folder = self.results.open("segment") if out_dir is None else contextlib.nullcontext(Path(out_dir))
        with folder as out, self._seg_lock:
            try:
                return segment_upload(self.seg_model, path, prompts, out, self.limits, device=self.device,
                                      fast=fast)
            except MedMoEError as err:
                renamed = named_after_upload(err, path)
                if renamed is err:
                    raise
                raise renamed from err

    def close(self) -> None:
        """Remove the result folders, and the scratch folder when this object made it."""
        self.results.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def load_services(model_dir: str | None, seg_model_dir: str | None, index_dir: str | None, *,
                  device: str = "auto", limits: UploadLimits | None = None) -> Services:
    """Check every argument, then load the models and the index.

    Raises:
        InvalidInputError / NotAModelDirectoryError: a missing or wrong-kind model, an index without a model,
            nothing to serve, a bad device.
    """
    from medmoe.devices import resolve_device
    from medmoe.saved_model import load_model, read_model_config

    if not model_dir and not seg_model_dir:
        raise InvalidInputError("nothing to serve: give --model (MedMoE) and/or --seg-model (MoME)")
    if index_dir and not model_dir:
        raise InvalidInputError("--index needs --model, the MedMoE model the index was built with")
    for flag, path, wanted in (("--model", model_dir, "medmoe"), ("--seg-model", seg_model_dir, "mome")):
        if path:
            kind, _ = read_model_config(path)
            if kind != wanted:
                raise InvalidInputError(f"{flag} {path}: a {kind!r} model; {flag} needs a {wanted!r} model")
    if index_dir and not Path(index_dir).exists():
        raise InvalidInputError(f"--index {index_dir}: no such folder (write one with `medmoe align index`)")
    resolved = resolve_device(device)
    model = load_model(model_dir, device=str(resolved)) if model_dir else None
    seg_model = load_model(seg_model_dir, device=str(resolved)) if seg_model_dir else None
    index = None
    if index_dir:
        from medmoe.align.index import SearchIndex

        index = SearchIndex.load(index_dir)
    logger.info("serving on %s: model %s, seg model %s, index %s", resolved, model_dir, seg_model_dir, index_dir)
    return Services(model, seg_model, index, index_root=Path(index_dir) if index_dir else None, device=resolved,
                    limits=limits)
