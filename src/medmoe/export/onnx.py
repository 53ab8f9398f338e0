"""Export MedMoE and MoME to ONNX and check the files against PyTorch with onnxruntime.

``export_onnx(model, out_dir)`` writes one ``<graph>.onnx`` per exported graph plus ``export.json`` (the
model, its config hash, each graph's inputs / outputs as the ONNX files declare them, the opset, the
exporter and the parity results):

* MedMoE: ``image_encoder.onnx`` (images -> image_embeds, router_probs, expert_index) and
  ``text_encoder.onnx`` (input_ids, attention_mask -> text_embeds), with the tokenizer in ``tokenizer/``.
* MoME: ``mome.onnx`` (volume, text_emb -> logits), with the model's class-prompt embeddings in
  ``class_embeddings.npz``.

Graphs are traced with ``torch.onnx.export(dynamo=True)``; when that fails for a graph, the TorchScript
exporter is tried and the reason recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import operator
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medmoe.config import config_to_dict
from medmoe.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from medmoe.errors import InvalidInputError, MedMoEError
from medmoe.export.graphs import PromptedSegmenter, RoutedImageEncoder, TextEncoder, eager_attention

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
DEFAULT_ATOL = 1e-4
MANIFEST = "export.json"
SAMPLE_REPORTS = (
    "Chest radiograph: mild cardiomegaly, no pleural effusion.",
    "CT abdomen: 4 mm nodule in the left lobe.",
    "MRI brain: no acute lesion.",
    "Ultrasound: hypoechoic mass with posterior shadowing, no free fluid, normal kidneys.",
    "Normal study.",
)


class ExportParityError(MedMoEError):
    """An exported graph's onnxruntime outputs differ from PyTorch's beyond the tolerance."""


@dataclass
class ParityCase:
    """Parity inputs and a function computing the model's own outputs on them (its public method, not the
    traced module, so the check covers the export wrapper too)."""

    inputs: tuple[Tensor, ...]
    expected: Callable[[], list[Tensor]]


@dataclass
class Graph:
    """One graph to export and how to check it.

    Attributes:
        name: file stem (``<name>.onnx``).
        module: the tensor-only module to trace (:mod:`medmoe.export.graphs`).
        example: example inputs for tracing.
        input_names / output_names: the graph's names, in order.
        dynamic: input name -> {axis: dimension name} of the axes left dynamic.
        cases: parity cases (other sizes than ``example``'s, to exercise the dynamic axes).
        exact: outputs that must be equal, not close (routing choices).
    """

    name: str
    module: nn.Module
    example: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]
    cases: list[ParityCase]
    exact: tuple[str, ...] = ()
    translations: dict[Any, Callable] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- graphs
def _medmoe_graphs(model: nn.Module, seed: int) -> list[Graph]:
    g = torch.Generator().manual_seed(seed)
    size = model.config.backbone.image_size

    outputs = operator.itemgetter("image_embeds", "router_probs", "expert_index")

    def image_case(b: int) -> ParityCase:
        x = torch.randn(b, 3, size, size, generator=g)
        return ParityCase((x,), lambda: list(outputs(model.image_features(x))))

    image = Graph("image_encoder", RoutedImageEncoder(model).eval(), image_case(2).inputs, ["images"],
                  ["image_embeds", "router_probs", "expert_index"], {"images": {0: "batch"}},
                  [image_case(3), image_case(1)], exact=("expert_index",))

    def text_case(texts: Sequence[str]) -> ParityCase:
        enc = model.text.tokenize(list(texts))
        return ParityCase((enc["input_ids"], enc["attention_mask"]), lambda: [model.encode_text(list(texts))])

    dynamic = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    text = Graph("text_encoder", TextEncoder(model).eval(), text_case(SAMPLE_REPORTS[:2]).inputs,
                 ["input_ids", "attention_mask"], ["text_embeds"], dynamic,
                 [text_case(SAMPLE_REPORTS[:3]), text_case(SAMPLE_REPORTS[3:])])
    return [image, text]


def _mome_graphs(model: nn.Module, seed: int) -> list[Graph]:
    g = torch.Generator().manual_seed(seed)
    roi = tuple(model.config.roi_size)
    names = list(model.class_names)

    def case(b: int, k: int) -> ParityCase:
        volume = torch.rand(b, model.config.in_channels, *roi, generator=g)
        emb = model.embed_prompts([names[i % len(names)] for i in range(k)])
        return ParityCase((volume, emb), lambda: [model(volume, text_emb=emb)])

    return [Graph("mome", PromptedSegmenter(model).eval(), case(2, 3).inputs, ["volume", "text_emb"], ["logits"],
                  {"volume": {0: "batch"}, "text_emb": {0: "classes"}}, [case(1, 2), case(2, 5)],
                  translations=_pool_translations())]


def _pool_translations() -> dict[Any, Callable]:
    """ONNX for ``adaptive_avg_pool3d`` (MoME's full-resolution scale under half-resolution fusion), which
    the dynamo exporter lacks: an ``AveragePool`` whose window is the (static, whole) ratio of the sizes."""
    from onnxscript import opset18 as op

    def adaptive_avg_pool3d(x, output_size):
        sizes = [int(s) for s in x.shape[-3:]]
        kernel = [s // o for s, o in zip(sizes, output_size)]
        if any(k * o != s for k, o, s in zip(kernel, output_size, sizes)):
            raise InvalidInputError(f"adaptive_avg_pool3d {sizes} -> {list(output_size)}: sizes must divide")
        return op.AveragePool(x, kernel_shape=kernel, strides=kernel)

    return {torch.ops.aten._adaptive_avg_pool3d.default: adaptive_avg_pool3d}


def _family(model: nn.Module) -> str:
    model_type = getattr(model, "model_type", None)
    if model_type not in ("medmoe", "mome"):
        raise InvalidInputError(f"cannot export a {type(model).__name__}: expected a MedMoE or MoME model")
    return model_type


def model_graphs(model: nn.Module, *, seed: int = 0) -> list[Graph]:
    """The graphs ``export_onnx`` writes for ``model`` (a MedMoE or a MoME)."""
    return _medmoe_graphs(model, seed) if _family(model) == "medmoe" else _mome_graphs(model, seed)


# ---------------------------------------------------------------------------------------------- export
def _trace(graph: Graph, path: Path, opset: int | None) -> tuple[str, str | None]:
    """Write ``graph`` to ``path``; returns (exporter used, why the dynamo exporter failed or None)."""
    named = {dim: torch.export.Dim(dim) for axes in graph.dynamic.values() for dim in axes.values()}  # shared by name
    dynamic_shapes = {name: {axis: named[dim] for axis, dim in graph.dynamic.get(name, {}).items()} or None
                      for name in graph.input_names}
    try:
        program = torch.onnx.export(graph.module, graph.example, None, dynamo=True, opset_version=opset,
                                    input_names=graph.input_names, output_names=graph.output_names,
                                    dynamic_shapes=dynamic_shapes, custom_translation_table=graph.translations or None,
                                    verbose=False)
        program.save(str(path), external_data=None)
        return "dynamo", None
    except Exception as err:  # noqa: BLE001 - any tracing failure falls back to the TorchScript exporter
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        log.warning("%s: the dynamo exporter failed (%s); trying the TorchScript exporter", graph.name, reason)
    if getattr(graph.module, "branches", False):
        graph.module.branches = False  # tracing would keep one side of each If: run every expert instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": the warning above says why
        torch.onnx.export(graph.module, graph.example, str(path), dynamo=False, opset_version=opset or 18,
                          input_names=graph.input_names, output_names=graph.output_names, dynamic_axes=graph.dynamic)
    return "torchscript", reason


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's INFO chatter (hundreds of optimiser lines) and its note that torchvision's ops are
    not registered out of the log unless medmoe logs at DEBUG."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    levels = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.ERROR}
    saved = {name: logging.getLogger(name).level for name in levels}
    try:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # inputs sharing a dynamic axis (input_ids, attention_mask) make it note that the name is reused
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Inputs and outputs (name, shape with named dynamic axes, dtype) and the default-domain opset."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict[str, Any]]:
        return [{"name": v.name, "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values]

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return describe(proto.graph.input), describe(proto.graph.output), int(opset)


def check_parity(graph: Graph, path: Path, *, atol: float = DEFAULT_ATOL) -> dict[str, Any]:
    """Run ``path`` with onnxruntime (CPU) on ``graph.cases`` and compare with the model's own outputs.

    Returns:
        ``{"ok", "atol", "max_abs_diff": {output: float}, "exact": [outputs compared for equality],
        "routing_identical": bool | None, "cases": [input shapes]}``; ``ok`` needs every difference <= atol
        and the ``exact`` outputs equal.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = {name: 0.0 for name in graph.output_names}
    identical = True
    shapes = []
    for case in graph.cases:
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in case.expected()]
        got = session.run(graph.output_names, {n: t.numpy() for n, t in zip(graph.input_names, case.inputs)})
        shapes.append({n: list(t.shape) for n, t in zip(graph.input_names, case.inputs)})
        for name, want, have in zip(graph.output_names, expected, got):
            if want.shape != have.shape:
                raise ExportParityError(f"{path.name}: output {name} has shape {have.shape}, PyTorch {want.shape}")
            if name in graph.exact:
                identical = identical and bool(np.array_equal(want, have))
                diffs[name] = max(diffs[name], float(np.abs(want.astype(np.int64) - have.astype(np.int64)).max(initial=0)))
            else:
                diffs[name] = max(diffs[name], float(np.abs(want.astype(np.float64) - have).max(initial=0.0)))
    close = all(d <= atol for n, d in diffs.items() if n not in graph.exact)
    return {"ok": bool(close and identical), "atol": atol, "max_abs_diff": diffs, "exact": list(graph.exact),
            "routing_identical": identical if graph.exact else None, "cases": shapes}


def planned_paths(model: nn.Module, out_dir: str | os.PathLike) -> list[Path]:
    """Every path ``export_onnx`` writes in ``out_dir`` for ``model``."""
    out = Path(out_dir)
    medmoe = _family(model) == "medmoe"
    names = [f"{g}.onnx" for g in (("image_encoder", "text_encoder") if medmoe else ("mome",))]
    return [*(out / n for n in names), *(out / f"{n}.data" for n in names),
            out / ("tokenizer" if medmoe else "class_embeddings.npz"), out / MANIFEST]


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, name: str | None = None, overwrite: bool = False,
                check: bool = True, atol: float = DEFAULT_ATOL, opset: int | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Export ``model`` to ONNX in ``out_dir`` and (by default) check every graph with onnxruntime.

    Args:
        model: a MedMoE or MoME, exported on the CPU in float32 and eval mode and given back as it was (its
            parameters, gradients and buffers on their devices in their dtypes, each module in its mode).
        out_dir: created if missing.
        name: what to record as the model (a registered name or a directory); default ``model.model_name``.
        overwrite: replace files an earlier export wrote; without it an existing file is an error.
        check: compare onnxruntime with PyTorch on random inputs (``atol`` on values, equality on routes).
        opset: ONNX opset (None: the exporter's default).
        seed: seed of the random parity inputs.

    Returns:
        The ``export.json`` manifest (also written to ``out_dir``).

    Raises:
        InvalidInputError: a file exists and ``overwrite`` is False, or the model cannot be exported.
        ExportParityError: with ``check``, a graph differs from PyTorch (the files and manifest are kept).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out}: exists and is not a directory")
    existing = [p for p in planned_paths(model, out) if p.exists()]
    if existing and not overwrite:
        raise InvalidInputError(f"{out}: would overwrite {', '.join(p.name for p in existing)}; "
                                "pass --overwrite (overwrite=True) to replace them")
    for p in existing:
        (shutil.rmtree if p.is_dir() else Path.unlink)(p)
    out.mkdir(parents=True, exist_ok=True)
    with _on_cpu_in_fp32_eval(model):
        manifest, failed = _export(model, out, name, check, atol, opset, seed)
    if failed:
        details = {g: manifest["graphs"][g]["parity"]["max_abs_diff"] for g in failed}
        raise ExportParityError(f"onnxruntime differs from PyTorch beyond atol={atol} (or in routing) for "
                                f"{', '.join(failed)}: {details}; files kept in {out} (see {MANIFEST})")
    return manifest


@contextlib.contextmanager
def _on_cpu_in_fp32_eval(model: nn.Module) -> Iterator[None]:
    """``model`` on the CPU in float32 and eval mode inside the block; afterwards every parameter, gradient
    and buffer is back on its device in its dtype and every module in its own mode. The parameter objects
    stay the same (an optimiser holding them keeps working), as with ``Module.to``."""
    modes = [(module, module.training) for module in model.modules()]
    params = [(p, p.device, p.dtype) for p in model.parameters()]
    buffers = [(module, name, buffer.device, buffer.dtype) for module in model.modules()
               for name, buffer in module._buffers.items() if buffer is not None]
    model.to("cpu").float().eval()
    try:
        yield
    finally:
        for p, device, dtype in params:
            p.data = p.data.to(device, dtype)
            if p.grad is not None:
                p.grad.data = p.grad.data.to(device, dtype)
        for module, name, device, dtype in buffers:
            module._buffers[name] = module._buffers[name].to(device, dtype)
        for module, training in modes:
            module.training = training


def _export(model: nn.Module, out: Path, name: str | None, check: bool, atol: float, opset: int | None,
            seed: int) -> tuple[dict[str, Any], list[str]]:
    """Write the graphs, assets and manifest of a CPU float32 ``model``; returns the manifest as written and
    the graphs whose parity check failed."""
    config = config_to_dict(model.config)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    manifest: dict[str, Any] = {
        "format": "onnx", "model": name or getattr(model, "model_name", None), "model_type": model.model_type,
        "config_sha256": digest, "config": config, "versions": _versions(check), "graphs": {},
    }
    for graph in model_graphs(model, seed=seed):
        path = out / f"{graph.name}.onnx"
        log.info("%s: tracing (the dynamo exporter takes a minute or more)", path.name)
        start = time.perf_counter()
        with torch.no_grad(), eager_attention(graph.module), _quiet_exporter():
            exporter, reason = _trace(graph, path, opset)
        seconds = time.perf_counter() - start
        inputs, outputs, used_opset = _io(path)
        entry: dict[str, Any] = {"file": path.name, "inputs": inputs, "outputs": outputs, "opset": used_opset,
                                 "exporter": exporter, "export_s": round(seconds, 2)}
        if reason:
            entry["dynamo_error"] = reason
        if (out / f"{path.name}.data").exists():
            entry["external_data"] = f"{path.name}.data"
        if check:
            entry["parity"] = check_parity(graph, path, atol=atol)
        log.info("%s: %s exporter, %.1f s; parity %s", path.name, exporter, seconds,
                 entry["parity"]["max_abs_diff"] if check else "not checked")
        manifest["graphs"][graph.name] = entry
    manifest.update(_assets(model, out))
    text = json.dumps(manifest, indent=2) + "\n"
    (out / MANIFEST).write_text(text)
    failed = [g for g, entry in manifest["graphs"].items() if check and not entry["parity"]["ok"]]
    return json.loads(text), failed  # what the file holds (tuples as lists)


def _assets(model: nn.Module, out: Path) -> dict[str, Any]:
    """What a runtime needs besides the graphs: MedMoE's tokenizer, MoME's class-prompt embeddings."""
    if model.model_type == "medmoe":
        model.text.tokenizer.save_pretrained(out / "tokenizer")
        return {"tokenizer": "tokenizer", "max_length": int(model.config.text.max_length),
                "image_size": int(model.config.backbone.image_size),
                "image_normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
    names = list(model.class_names)
    with torch.no_grad():
        table = model.embed_prompts(names).cpu().numpy()
    np.savez(out / "class_embeddings.npz", names=np.array(names), embeddings=table)
    return {"class_embeddings": "class_embeddings.npz", "roi_size": list(model.config.roi_size),
            "spacing": list(model.config.spacing), "hu_window": list(model.config.hu_window)}


def _versions(check: bool) -> dict[str, str]:
    import onnx

    from medmoe import __version__

    versions = {"medmoe": __version__, "torch": torch.__version__, "onnx": onnx.__version__}
    if check:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions
