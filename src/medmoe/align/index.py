"""A saved search index over a gallery: image and report embeddings in FAISS, with the items they stand for.

    >>> build_index(model, "archive/manifest.csv", "archive.idx", model_name="runs/medmoe/model")
    >>> index = SearchIndex.load("archive.idx")
    >>> index.search_text(model, ["left pleural effusion"], k=5)[0][0]
    Hit(rank=1, score=0.61, row=1207, id='1208', path='/data/cxr/p12/a.dcm', report='...')

The folder ``IDX`` holds:

* ``meta.json``: ``kind`` and ``params`` of the FAISS index of the images (chosen by size, see
  :mod:`medmoe.align.faiss_index`; ``indexes`` has those of each target), ``n``, ``dim``, ``model`` (name or directory given at build time),
  ``model_fingerprint``, ``created``, ``targets`` (``images``, and ``reports`` when items have reports),
  the data source, split and counts;
* ``images.faiss``, ``reports.faiss``: the indexes (inner product = cosine of unit vectors);
  ``reports.rows.npy`` the item rows of the report index when some items have no report;
* ``items.jsonl``: one JSON object a row of the index (``id``, ``path``, ``report``, ``expert``,
  ``modality``), no pickled object;
* ``errors.csv``: samples that could not be read (``path``, ``reason``);
* ``build.json`` and ``parts/``: the resumable embedding state (:mod:`medmoe.align.index_parts`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medmoe import distributed
from medmoe.align.evaluate import model_image_size, write_errors_csv
from medmoe.align.faiss_index import IndexPlan, build_faiss, choose_index, import_faiss, search_faiss
from medmoe.align.index_parts import (
    DEFAULT_CHUNK_SIZE,
    Gallery,
    embed_chunk,
    finished_chunks,
    merge_parts,
    model_fingerprint,
    write_part,
)
from medmoe.devices import resolve_device
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.paths import write_text_atomic

log = logging.getLogger(__name__)

TARGETS = ("images", "reports")
INDEX_FILES = ("meta.json", "build.json", "items.jsonl", "errors.csv", "images.faiss", "reports.faiss",
               "reports.rows.npy")


@dataclass
class Hit:
    """One search result.

    Attributes:
        rank: 1-based position; score: cosine similarity; row: row in the index's items table.
        id: the item's id (manifest ``id`` column or its 1-based data row, or the shard sample key).
        path: the item's image path (for shards: the sample's ``source`` or ``shard#key``); "" if none.
        report: the item's report text; "" if none.
    """

    rank: int
    score: float
    row: int
    id: str
    path: str
    report: str


class SearchIndex:
    """An index folder written by :func:`build_index`, loaded for searching.

    Attributes:
        meta: the contents of ``meta.json`` (``kind``, ``params``, ``n``, ``dim``, ``model``, ``created``,
            ``targets``, ...).
        items: the items table, one dict a row.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], items: list[dict[str, Any]],
                 indexes: dict[str, Any], rows: dict[str, np.ndarray | None]) -> None:
        self.folder = folder
        self.meta = meta
        self.items = items
        self._indexes = indexes
        self._rows = rows
        self._plans = {t: IndexPlan(v["kind"], dict(v["params"])) for t, v in meta["indexes"].items()}
        self._checked: set[int] = set()

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchIndex:
        """Load an index folder.

        Raises:
            InvalidInputError: not an index folder (no ``meta.json``, an unfinished build) or a damaged file.
        """
        faiss = import_faiss()
        folder = Path(path)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            hint = " (an unfinished build: run `medmoe align index` again)" if (folder / "build.json").is_file() else ""
            raise InvalidInputError(f"{folder}: not a search index (no meta.json){hint}")
        try:
            meta = json.loads(meta_path.read_text())
            with open(folder / "items.jsonl", encoding="utf-8") as f:
                items = [json.loads(line) for line in f if line.strip()]
            indexes = {t: faiss.read_index(str(folder / f"{t}.faiss")) for t in meta["targets"]}
            rows = {t: np.load(f) if (f := folder / f"{t}.rows.npy").is_file() else None
                    for t in meta["targets"]}
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise InvalidInputError(f"{folder}: damaged search index ({type(err).__name__}: {err})") from None
        if len(items) != meta["n"]:
            raise InvalidInputError(f"{folder}: items.jsonl has {len(items)} rows, meta.json says {meta['n']}")
        return cls(folder, meta, items, indexes, rows)

    def __len__(self) -> int:
        return len(self.items)

    def search(self, vectors: np.ndarray | torch.Tensor, k: int = 10, target: str = "images") -> list[list[Hit]]:
        """The ``k`` best items of each query vector (cosine; the vectors are L2-normalised here).

        Args:
            vectors: (Q, E) or (E,) query embeddings.
            target: ``images`` (search the image embeddings) or ``reports`` (the report embeddings).
        """
        if target not in TARGETS:
            raise InvalidInputError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
        if target not in self._indexes:
            raise InvalidInputError(f"{self.folder}: no {target} index (its items have no {target[:-1]})")
        q = vectors.detach().float().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
        q = np.atleast_2d(q).astype(np.float32)
        if q.shape[1] != self.meta["dim"]:
            raise InvalidInputError(f"query vectors of width {q.shape[1]}: the index {self.folder} holds width "
                                    f"{self.meta['dim']} (built with model {self.meta['model']})")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores, found = search_faiss(self._indexes[target], self._plans[target], q, k)
        rows = self._rows[target]
        out = []
        for query_scores, query_rows in zip(scores, found):
            hits = []
            for score, position in zip(query_scores.tolist(), query_rows.tolist()):
                if position < 0:
                    continue
                row = int(rows[position]) if rows is not None else int(position)
                item = self.items[row]
                hits.append(Hit(rank=len(hits) + 1, score=float(score), row=row, id=str(item.get("id", row)),
                                path=item.get("path") or "", report=item.get("report") or ""))
            out.append(hits)
        return out

    @torch.no_grad()
    def search_text(self, model: nn.Module, texts: list[str], k: int = 10, target: str = "images") -> list[list[Hit]]:
        """Embed ``texts`` with ``model`` and search (``target="images"``: text -> image retrieval)."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InvalidInputError("search_text needs a list of non-empty query texts")
        self._check_model(model)
        return self.search(model.eval().encode_text(list(texts)), k=k, target=target)

    @torch.no_grad()
    def search_image(self, model: nn.Module, images: list[str | os.PathLike] | torch.Tensor, k: int = 10,
                     target: str = "images") -> list[list[Hit]]:
        """Embed query images (paths of any format the readers open, or a (Q, 3, H, W) tensor as
        :class:`~medmoe.data.ImageTransform` returns them) and search (``target="reports"``: image -> text)."""
        self._check_model(model)
        device = next(model.parameters()).device
        if not isinstance(images, torch.Tensor):
            images = read_query_images(images, model_image_size(model))
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidInputError(f"query images of shape {tuple(images.shape)}: expected (Q, 3, H, W)")
        return self.search(model.eval().encode_image(images.to(device)), k=k, target=target)

    def _check_model(self, model: nn.Module) -> None:
        """Refuse a model of another embedding width; warn (once) about a model other than the build's."""
        dim = int(getattr(model.config, "embed_dim", -1))
        if dim != self.meta["dim"]:
            raise InvalidInputError(f"model of embedding width {dim}: the index {self.folder} holds width "
                                    f"{self.meta['dim']} (built with model {self.meta['model']})")
        if id(model) in self._checked:
            return
        self._checked.add(id(model))
        if self.meta.get("model_fingerprint") and model_fingerprint(model) != self.meta["model_fingerprint"]:
            log.warning("%s was built with other model weights (%s): scores compare embeddings of two models",
                        self.folder, self.meta["model"])


def read_query_images(paths: list[str | os.PathLike], image_size: int) -> torch.Tensor:
    """(Q, 3, S, S) uint8 query images, read and resized as the index's items were."""
    from medmoe.data.readers import read_image
    from medmoe.data.transforms import ImageTransform

    if isinstance(paths, str | os.PathLike) or not paths:
        raise InvalidInputError("search_image needs a list of image paths or a (Q, 3, H, W) tensor")
    transform = ImageTransform(image_size=image_size, train=False)
    return torch.stack([transform(read_image(p, target_size=transform.decode_size)[0]) for p in paths])


def _prepare_folder(out: Path, build: dict[str, Any], overwrite: bool) -> str | None:
    """Rank 0: check ``out`` against this build (None when fine) and write ``build.json``."""
    recorded = out / "build.json"
    if out.exists() and not out.is_dir():
        return f"{out}: exists and is not a folder"
    if recorded.is_file() and not overwrite:
        try:
            old = json.loads(recorded.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"{recorded}: unreadable ({err}); use --overwrite to rebuild"
        if old.get("model_fingerprint") != build["model_fingerprint"]:
            return (f"{out}: holds an index of model {old.get('model')} (weights {old.get('model_fingerprint')}), not "
                    f"of this run's model {build['model']} (weights {build['model_fingerprint']}); use --overwrite "
                    "to replace it or another --out")
        old_data, data = old.get("data") or {}, build["data"]
        changed = [f"{k} {old_data.get(k)!r} -> {data[k]!r}" for k in data if old_data.get(k) != data[k]]
        if changed:
            return (f"{out}: holds an index of data {old_data.get('source')} ({'; '.join(changed)}); use "
                    "--overwrite to replace it or another --out")
    elif out.is_dir() and any(out.iterdir()) and not overwrite and not recorded.is_file():
        return f"{out}: a non-empty folder that is not a search index; give a new or empty folder"
    if overwrite and out.is_dir():
        shutil.rmtree(out / "parts", ignore_errors=True)
        for name in INDEX_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(recorded, json.dumps(build, indent=2) + "\n")
    return None


def _raise_if_any(message: str | None) -> None:
    """Raise rank 0's message on every rank (so that no rank waits for another that stopped)."""
    messages = [m for m in distributed.all_gather_objects(message) if m]
    if messages:
        raise InvalidInputError(messages[0])


def build_index(model: nn.Module, data: str | os.PathLike, out: str | os.PathLike, *, kind: str = "auto",
                batch_size: int = 32, device: str | torch.device = "cpu", workers: int = 0, progress: bool = True,
                resume: bool = True, split: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                model_name: str | None = None, overwrite: bool = False) -> Path:
    """Embed the images and reports of a manifest or shards and save a search index to ``out``.

    Embedding runs in chunks saved under ``out/parts/``; with ``resume`` a rerun skips the finished chunks
    (``resume=False`` embeds every chunk again). Under ``torch.distributed`` every rank calls this with its
    own device: the ranks embed the missing chunks between them and rank 0 builds the index.

    Args:
        model: a MedMoE model; model_name: what ``meta.json`` records as the model (a saved model directory
            or a registered name; default ``"<in memory>"``); ``medmoe align search`` loads it when given none.
        kind: ``auto`` (by size), ``exact``, ``pq``, ``ivf``, ``hnsw`` or ``ivfpq``; see
            :mod:`medmoe.align.faiss_index`.
        device: ``cpu``, ``cuda[:N]`` or ``auto``; under torchrun, each rank's own.
        chunk_size: manifest rows per part (a shard source has a part per shard).
        overwrite: replace an index of another model or data in ``out`` (otherwise an error).

    Returns:
        ``out`` as a Path.

    Raises:
        InvalidInputError: bad arguments, ``out`` holding another build, or no readable item at all.
    """
    choose_index(1, 1, kind)  # checks the kind before any work
    if batch_size < 1:
        raise InvalidInputError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out)
    device = resolve_device(device)
    gallery = Gallery.open(data, model_image_size(model), split=split, chunk_size=chunk_size)
    name = model_name or "<in memory>"
    build = {"model": name, "model_fingerprint": model_fingerprint(model), "data": gallery.fingerprint()}
    _raise_if_any(_prepare_folder(out, build, overwrite) if distributed.rank() == 0 else None)
    todo = list(range(gallery.num_chunks))
    if resume and distributed.rank() == 0:
        done = set(finished_chunks(out, gallery.num_chunks))
        todo = [c for c in todo if c not in done]
        if done:
            log.info("%s: %d of %d chunks already embedded, %d to go", out, len(done), gallery.num_chunks, len(todo))
    todo = distributed.all_gather_objects(todo)[0]
    mine = [todo[i] for i in distributed.share(len(todo))]
    _embed_chunks(model.to(device).eval(), gallery, mine, out, batch_size, device, workers, progress)
    distributed.barrier()
    message = None
    if distributed.rank() == 0:
        try:
            _write_index(out, gallery, kind, build)
        except MedMoEError as err:
            if not distributed.is_distributed():
                raise
            message = str(err)
    distributed.barrier()  # the others wait for rank 0's build here, on the long-wait group, not in a collective
    _raise_if_any(message)
    return out


def _embed_chunks(model: nn.Module, gallery: Gallery, chunks: list[int], out: Path, batch_size: int,
                  device: torch.device, workers: int, progress: bool) -> None:
    sizes = [gallery.chunk_size_of(c) for c in chunks]
    total = sum(sizes) if all(s is not None for s in sizes) else None
    label = "embed" if not distributed.is_distributed() else f"embed (rank {distributed.rank()})"
    with tqdm(total=total, desc=label, unit="item", disable=not progress or distributed.rank() != 0) as bar:
        for chunk in chunks:
            part = embed_chunk(model, gallery, chunk, batch_size=batch_size, device=device, workers=workers, bar=bar)
            write_part(out, chunk, part)


def _write_index(out: Path, gallery: Gallery, kind: str, build: dict[str, Any]) -> None:
    """Rank 0: merge the parts, build the FAISS indexes, write items, errors and meta (meta last)."""
    faiss = import_faiss()
    merged = merge_parts(out, gallery.num_chunks)
    n = len(merged["items"])
    if n == 0:
        raise InvalidInputError(f"{gallery.source}: no item could be read ({len(merged['bad'])} unreadable); "
                                f"see {out / 'errors.csv'}")
    write_errors_csv(out / "errors.csv", [(b["path"], b["reason"]) for b in merged["bad"]])
    dim = int(merged["images"].shape[1])
    has_report = np.array([bool(item["report"]) for item in merged["items"]])
    targets = {"images": (merged["images"], None)}
    if has_report.any():
        rows = None if has_report.all() else np.flatnonzero(has_report)
        targets["reports"] = (merged["reports"] if rows is None else merged["reports"][rows], rows)
    (out / "meta.json").unlink(missing_ok=True)  # an index is complete only once meta.json is back
    plans = {}
    for target, (vectors, rows) in targets.items():
        plans[target] = target_plan = choose_index(len(vectors), dim, kind)
        log.info("building the %s index of %d %s", target_plan.kind, len(vectors), target)
        started = time.perf_counter()
        faiss.write_index(build_faiss(vectors, target_plan), str(out / f".{target}.faiss.tmp"))
        os.replace(out / f".{target}.faiss.tmp", out / f"{target}.faiss")
        log.info("%s index (%s) built in %.1f s", target, target_plan.kind, time.perf_counter() - started)
        if rows is not None:
            np.save(out / f"{target}.rows.npy", rows.astype(np.int64))
        else:
            (out / f"{target}.rows.npy").unlink(missing_ok=True)
    write_text_atomic(out / "items.jsonl", (
        json.dumps({**item, "expert": expert, "modality": modality}) + "\n"
        for item, expert, modality in zip(merged["items"], merged["experts"].tolist(), merged["modality"].tolist())))
    meta = {
        "kind": plans["images"].kind, "params": plans["images"].params, "n": n, "dim": dim, "model": build["model"],
        "model_fingerprint": build["model_fingerprint"], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": list(targets), "n_reports": int(has_report.sum()), "unreadable": len(merged["bad"]),
        "data": build["data"]["source"], "split": build["data"]["split"], "requested_kind": kind,
        "indexes": {t: {"kind": p.kind, "params": p.params, "n": len(targets[t][0])} for t, p in plans.items()},
    }
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")

