"""Cost of MoME over a plain MONAI SwinUNETR, measured side by side in one run, and whole-CT prediction time.

Both networks share the feature size, depths, norm and patch:

- ``plain``: ``monai.networks.nets.SwinUNETR(out_channels=K)``, one logit map per class from one conv;
- ``mome``: the same SwinUNETR + 5 scale experts + per-class voxel router + K dynamic heads, K prompts.

Forward passes (inference, ``torch.no_grad``) are timed interleaved so machine drift hits both alike;
``forward_ratio`` = median MoME time / median plain time is the figure MoME is held to (<= 1.15 at K = 13, peak
memory ratio <= 1.25). ``forward_cpu_ratio`` is the same ratio of process CPU time, steadier than wall time on a
shared machine (other processes' load does not count; at one thread it is the work done). With ``--train`` one
forward+backward step of each is timed too.

Peak memory of one forward: on CUDA ``torch.cuda.max_memory_allocated`` (activations + weights); on CPU the
peak resident-set growth of a fresh process during the forward (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), since CPU tensors live outside Python's allocator and ``tracemalloc`` cannot
see them.

Whole-CT prediction: a synthetic 256x256x128 CT at the model's spacing through ``medmoe.seg.predict``
(sliding window, gaussian blending, K prompts, post-processing), timed once after a warm-up window.

Prints one JSON object.

    python benchmarks/bench_seg.py [--feature-size 48] [--patch 96] [--k 13] [--repeats 3] [--train]
        [--ct-size 256 256 128] [--ct-model mome-swinunetr|mome-nano] [--no-ct] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import re
import statistics
import time

import numpy as np
import torch
from monai.networks.nets import SwinUNETR

import medmoe
from medmoe.backbones.swinunetr import norm_name
from medmoe.data.volumes import Volume

BTCV13 = ["spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
          "adrenal_gland_left"]


def _classes(k: int) -> list[str]:
    from medmoe.seg.classes import ClassTemplate

    names = BTCV13 + [n for n in ClassTemplate.default().names if n not in BTCV13]
    return names[:k]


def build(which: str, args) -> tuple[torch.nn.Module, dict]:
    """The model and the keyword arguments of its forward."""
    torch.manual_seed(0)
    mome = medmoe.create_model("mome-swinunetr", pretrained=False, feature_size=args.feature_size,
                               depths=tuple(args.depths), norm=args.norm, roi_size=(args.patch,) * 3,
                               text={"model": args.text})
    if which == "mome":
        return mome, {"text_emb": mome.embed_prompts(_classes(args.k))}
    plain = SwinUNETR(in_channels=1, out_channels=args.k, feature_size=args.feature_size, depths=tuple(args.depths),
                      norm_name=norm_name(args.norm, args.feature_size), spatial_dims=3)
    return plain, {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mb(key: str) -> float:
    text = open("/proc/self/status").read()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024.0


def _peak_cpu_worker(which: str, args, queue) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, kwargs = build(which, args)
    model.eval()
    x = torch.rand(args.batch, 1, args.patch, args.patch, args.patch)
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (Linux >= 4.0)
        f.write("5")
    with torch.no_grad():
        model(x, **kwargs)
    queue.put(_status_mb("VmHWM") - before)


def peak_memory_mb(which: str, args, device: torch.device) -> float:
    if device.type == "cuda":
        model, kwargs = build(which, args)
        model = model.to(device).eval()
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        x = torch.rand(args.batch, 1, args.patch, args.patch, args.patch, device=device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(x, **kwargs)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        del model
        torch.cuda.empty_cache()
        return peak
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_cpu_worker, args=(which, args, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def time_forward(args, device: torch.device) -> dict:
    models = {}
    for which in ("plain", "mome"):
        model, kwargs = build(which, args)
        models[which] = (model.to(device), {k: v.to(device) for k, v in kwargs.items()})
    x = torch.rand(args.batch, 1, args.patch, args.patch, args.patch, device=device)
    out: dict = {}

    def run(which: str, train: bool) -> tuple[float, float]:
        model, kwargs = models[which]
        model.train(train)
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        if train:
            model(x, **kwargs).float().mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x, **kwargs)
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu

    modes = [False, True] if args.train else [False]
    for train in modes:
        tag = "train_step" if train else "forward"
        times: dict[str, list[tuple[float, float]]] = {"plain": [], "mome": []}
        for which in times:  # warm-up
            run(which, train)
        for _ in range(args.repeats):
            for which in times:
                times[which].append(run(which, train))
        for i, clock in enumerate(("", "_cpu")):
            plain, mome = (statistics.median(t[i] for t in times[w]) for w in ("plain", "mome"))
            out[f"{tag}{clock}_s"] = {"plain": round(plain, 4), "mome": round(mome, 4)}
            out[f"{tag}{clock}_ratio"] = round(mome / plain, 4)
    out["params_m"] = {"plain": round(sum(p.numel() for p in models["plain"][0].parameters()) / 1e6, 3),
                       "mome_without_text": round(sum(p.numel() for n, p in models["mome"][0].named_parameters()
                                                      if not n.startswith("text.")) / 1e6, 3)}
    return out


def whole_ct(args, device: torch.device) -> dict:
    from medmoe.seg.predict import predict_volume

    torch.manual_seed(0)
    model = medmoe.create_model(args.ct_model, pretrained=False, text={"model": args.text}).to(device).eval()
    spacing = tuple(model.config.spacing)
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 30.0, size=tuple(args.ct_size)).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    volume = Volume(array=hu, affine=affine, path="synthetic-256x256x128", meta={"modality": "CT"})
    prompts = _classes(args.k)
    start = time.perf_counter()
    pred = predict_volume(model, volume, prompts, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                          device=device, check_ct=False)
    total = time.perf_counter() - start
    return {"model": args.ct_model, "shape": list(args.ct_size), "spacing_mm": list(spacing),
            "roi_size": list(model.config.roi_size), "overlap": args.overlap, "k": len(prompts),
            "seconds": round(total, 2), "inference_seconds": pred.meta.get("inference_seconds"),
            "mask_shape": list(pred.masks.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--depths", type=int, nargs=4, default=(2, 2, 2, 2))
    parser.add_argument("--norm", default="instance")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--k", type=int, default=13)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time one forward+backward step")
    parser.add_argument("--text", default="tiny-bert", help="text tower (prompt embeddings are precomputed)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-ct", action="store_true", help="skip the whole-CT prediction")
    parser.add_argument("--ct-model", default="mome-swinunetr")
    parser.add_argument("--ct-size", type=int, nargs=3, default=(256, 256, 128))
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", action="store_true",
                        help="dataset-scale figures instead (seg_scale.py): peak RSS of seg train on 4 vs 24 CTs, "
                             "cache read PersistentDataset vs memory map, whole-CT predict default vs --fast")
    args = parser.parse_args()
    if args.scale:
        import tempfile
        from pathlib import Path

        import seg_scale

        with tempfile.TemporaryDirectory(prefix="medmoe-seg-scale-") as tmp:
            print(json.dumps({"benchmark": "bench_seg --scale", **seg_scale.run(Path(tmp))}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict = {
        "benchmark": "bench_seg", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "feature_size": args.feature_size, "depths": list(args.depths), "norm": args.norm, "patch": args.patch,
        "k": args.k, "batch": args.batch, "repeats": args.repeats,
    }
    result.update(time_forward(args, device))
    if not args.no_memory:
        mem = {w: round(peak_memory_mb(w, args, device), 1) for w in ("plain", "mome")}
        result["peak_memory_mb"] = {**mem, "ratio": round(mem["mome"] / max(mem["plain"], 1e-6), 3),
                                    "how": "cuda max_memory_allocated" if device.type == "cuda" else
                                    "CPU peak RSS growth of a fresh process during one forward"}
    if not args.no_ct:
        result["whole_ct"] = whole_ct(args, device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
