"""ONNX export cost and onnxruntime vs PyTorch CPU inference, side by side: prints one JSON object.

For each model (medmoe-nano, mome-nano by default; registered configs, bundled MiniLM text weights, the
rest untrained): the wall time of ``export_onnx`` per graph (dynamo tracing + save) and of its parity check,
then the median time of one inference call in PyTorch and in onnxruntime (CPU, the same thread count),
alternating in rounds, and their ratio ``ort_over_torch`` (< 1: onnxruntime is faster).

* MedMoE image: ``model.image_features`` (sparse dispatch: only the chosen experts run) against
  ``image_encoder.onnx`` (every expert runs, the chosen one is gathered); random images.
  at batch 1 and ``--batch-size``; ``torch_exported_graph_over_sparse``: the exported computation (each chosen
  expert on the whole batch, then a gather) run in PyTorch over the model's sparse dispatch.
* MedMoE text: ``model.encode_text`` (tokenise + encoder + word alignment + projection) against
  tokenise + ``text_encoder.onnx``.
* MoME: ``model(volume, text_emb=emb)`` against ``mome.onnx`` on one roi-size patch with K prompts.

    python benchmarks/bench_export.py                              # 1 thread, batch 8, K 13
    python benchmarks/bench_export.py --threads 4 --rounds 7 --models mome-nano
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import medmoe  # noqa: E402
from medmoe.export import export_onnx  # noqa: E402
from medmoe.export.graphs import RoutedImageEncoder  # noqa: E402
from medmoe.registry import get_model_config  # noqa: E402

REPORTS = [
    "Chest radiograph: mild cardiomegaly with a small left pleural effusion.",
    "Axial CT of the abdomen: a 4 mm nodule in the right hepatic lobe.",
    "Brain MRI: ring-enhancing lesion in the left frontal lobe with oedema.",
    "Ultrasound: hypoechoic mass in the right thyroid lobe with posterior shadowing.",
]


def _median_pair(torch_call, ort_call, rounds: int) -> dict[str, float]:
    torch_call(), ort_call()  # warm-up
    t_times, o_times = [], []
    for _ in range(rounds):
        for call, times in ((torch_call, t_times), (ort_call, o_times)):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    t, o = statistics.median(t_times), statistics.median(o_times)
    return {"torch_ms": round(1e3 * t, 2), "ort_ms": round(1e3 * o, 2), "ort_over_torch": round(o / t, 3)}


def _session(path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(model, name: str, out: str) -> tuple[dict, float]:
    start = time.perf_counter()
    manifest = export_onnx(model, out, name=name)
    total = time.perf_counter() - start
    return manifest, total


def bench_medmoe(name: str, args) -> dict:
    model = medmoe.create_model(name).eval()
    with tempfile.TemporaryDirectory() as out:
        manifest, total = _export(model, name, out)
        image_s, text_s = _session(f"{out}/image_encoder.onnx", args.threads), _session(f"{out}/text_encoder.onnx", args.threads)
        size = model.config.backbone.image_size
        g = torch.Generator().manual_seed(0)
        batches = {b: torch.randn(b, 3, size, size, generator=g) for b in (1, args.batch_size)}
        reports = (REPORTS * args.batch_size)[: args.batch_size]
        exported = RoutedImageEncoder(model).eval()
        image = {}
        with torch.no_grad():
            for b, images in batches.items():
                image[f"batch_{b}"] = {
                    **_median_pair(lambda x=images: model.image_features(x),
                                   lambda x=images: image_s.run(None, {"images": x.numpy()}), args.rounds),
                    "experts_used": len(set(model.route(images)[0].tolist())),
                    # the exported computation run in PyTorch over the model's sparse dispatch: what the static
                    # routing (each chosen expert on the whole batch) costs by itself
                    "torch_exported_graph_over_sparse": _median_pair(
                        lambda x=images: model.image_features(x), lambda x=images: exported(x),
                        args.rounds)["ort_over_torch"]}

            def ort_text():
                enc = model.text.tokenize(reports)
                return text_s.run(None, {"input_ids": enc["input_ids"].numpy(),
                                         "attention_mask": enc["attention_mask"].numpy()})

            text = _median_pair(lambda: model.encode_text(reports), ort_text, args.rounds)
    return {"export": _export_figures(manifest, total), "image": {**image, "num_experts": model.num_experts},
            "text": {**text, "batch": args.batch_size}}


def bench_mome(name: str, args) -> dict:
    model = medmoe.create_model(name).eval()
    with tempfile.TemporaryDirectory() as out:
        manifest, total = _export(model, name, out)
        session = _session(f"{out}/mome.onnx", args.threads)
        roi = tuple(model.config.roi_size)
        volume = torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0))
        emb = model.embed_prompts(list(model.class_names[: args.classes]))
        with torch.no_grad():
            seg = _median_pair(lambda: model(volume, text_emb=emb),
                               lambda: session.run(None, {"volume": volume.numpy(), "text_emb": emb.numpy()}),
                               args.rounds)
    return {"export": _export_figures(manifest, total), "segment": {**seg, "volume": [1, 1, *roi], "classes": args.classes}}


def _export_figures(manifest: dict, total: float) -> dict:
    graphs = manifest["graphs"]
    return {"total_s": round(total, 1),
            "graphs": {g: {"export_s": e["export_s"], "exporter": e["exporter"], "opset": e["opset"],
                           "parity_ok": e["parity"]["ok"],
                           "max_abs_diff": {k: float(f"{v:.3g}") for k, v in e["parity"]["max_abs_diff"].items()}}
                       for g, e in graphs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["medmoe-nano", "mome-nano"])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=8, help="MedMoE images / reports per call")
    parser.add_argument("--classes", type=int, default=13, help="MoME prompts per call")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"threads": args.threads, "torch": torch.__version__, "onnxruntime": ort.__version__, "models": {}}
    for name in args.models:
        family = get_model_config(name)["model_type"]
        result["models"][name] = bench_medmoe(name, args) if family == "medmoe" else bench_mome(name, args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
