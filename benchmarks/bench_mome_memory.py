"""Peak memory of one MoME training step (forward + backward + loss) with K prompted classes, with the
per-voxel stage (router, fusion, heads) in one pass and in chunks, side by side in one run.

Arms, each in a fresh process (CPU: growth of the process's peak resident set, ``ru_maxrss``, over the
step; CUDA: ``max_memory_allocated`` above what the model and inputs hold):

- ``unchunked``: ``chunk_elements = cpu_chunk_elements = None``, the whole patch at once;
- ``cpu_chunks``: the CPU's cache-sized chunks only, no memory budget: the stage runs in chunks, but
  autograd keeps every chunk's intermediates for the backward;
- ``budget``: the model's defaults: chunks within ``chunk_elements`` elements of the (B, K, C, n) fused
  tensor, each chunk's forward recomputed in the backward (``torch.utils.checkpoint``).

The step is the training step's: labels as int16 ids (random, ~10 % of voxels per class) expanded on the
device through a lookup table, ``partial_label_loss`` (BCE + batch Dice), backward.

``gpu_estimate``: the bytes of the tensors the per-voxel stage and the loss hold, per (sample, class, voxel)
pair, under bf16 autocast (``PER_PAIR_BYTES``, from their shapes and dtypes), times the pairs of the
``--gpu-model`` config at this patch, K and batch. The per-pair figures are checked against the bytes autograd
saves for the backward, counted with saved-tensor hooks on a small patch under CPU bf16 autocast (the
ops that autocast casts to bf16, matmul and bmm, are the same on CUDA).

Prints one JSON object.

    python benchmarks/bench_mome_memory.py [--model mome-nano] [--patch 96] [--k 117] [--batch 1]
        [--fusion-scale 1|2] [--gpu-model mome-swinunetr] [--gpu-batch 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

ARMS = ("unchunked", "cpu_chunks", "budget")


def _classes(k: int) -> list[str]:
    from medmoe.seg.classes import ClassTemplate

    names = ClassTemplate.default().names
    if k > len(names):
        raise SystemExit(f"--k {k}: the template has {len(names)} classes")
    return list(names[:k])


def _model(name: str, patch: int, fusion_scale: int | None, text: str):
    import medmoe

    extra = {"fusion_scale": fusion_scale} if fusion_scale else {}
    return medmoe.create_model(name, pretrained=False, roi_size=(patch,) * 3, text={"model": text}, **extra)


def _peak_bytes(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(arm: str, args) -> dict:
    """One training step of ``arm`` in this (fresh) process."""
    import torch

    from medmoe.seg.data import expand_labels
    from medmoe.seg.loss import partial_label_loss

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = _model(args.model, args.patch, args.fusion_scale, args.text).to(device).train()
    if arm != "budget":
        model.chunk_elements = None
    if arm == "unchunked":
        model.cpu_chunk_elements = None
    k, b, p = args.k, args.batch, args.patch
    emb = model.embed_prompts(_classes(k))
    g = torch.Generator().manual_seed(1)
    image = torch.rand(b, 1, p, p, p, generator=g).to(device)
    # id i in 1..k marks class i - 1; id 0 (90 % of voxels) is background
    ids = torch.where(torch.rand(b, 1, p, p, p, generator=g) < 0.9, 0,
                      torch.randint(1, k + 1, (b, 1, p, p, p), generator=g)).to(torch.int16).to(device)
    table = torch.cat([torch.zeros(1, k, dtype=torch.bool), torch.eye(k, dtype=torch.bool)]).to(device)
    mask = torch.ones(b, k, dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = _peak_bytes(device)
    start = time.perf_counter()
    out = model(image, text_emb=emb, return_dict=True)
    losses = partial_label_loss(out["logits"], expand_labels(ids, table), mask)
    (losses["bce_loss"] + losses["dice_loss"] + out["balance_loss"]).backward()
    peak = _peak_bytes(device)
    seconds = time.perf_counter() - start
    n = (p // model.config.fusion_scale) ** 3
    return {"fusion_scale": model.config.fusion_scale, "peak_mb": round((peak - base) / 2**20, 1), "process_peak_mb": round(peak / 2**20, 1),
            "seconds": round(seconds, 2), "chunk_elements": model.chunk_elements,
            "cpu_chunk_elements": model.cpu_chunk_elements,
            "recomputed": model._voxel_chunking(device, b * k * model.config.expert_channels, n)[1],
            "threads": torch.get_num_threads()}


def per_pair_bytes(scales: int, channels: int, hidden: int) -> dict[str, dict[str, int]]:
    """The tensors of the per-voxel stage and of the loss, in bytes per (sample, class, voxel) pair.

    ``kept``: held from the forward until the backward uses it; ``transient``: freed within the forward.
    """
    return {
        "per_voxel_stage": {
            "kept": (4 * scales  # gates, float32: softmax output, saved by its backward
                     + 2 * scales  # gates cast to bf16, saved by the fusion's multiply-adds
                     + 2 * channels  # fused (B, K, C, n) bf16, saved by the first head matmul
                     + 2 * hidden * 2  # the two hidden layers, bf16, saved by ReLU and the next matmul
                     + 2 + 2),  # logits bf16 of each chunk, and their concatenation
            "transient": 4 * scales,  # router logits, float32, until the softmax
        },
        "loss": {
            "kept": 4 + 4 + 4,  # logits as float32, target as float32, sigmoid (all saved)
            "transient": 1 + 1 + 4 + 4,  # expanded bool target (gathered, made contiguous), BCE map, prob*target
        },
    }


def _new_storage_bytes(tensors: list, known: set[int]) -> int:
    seen, total = set(known), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def saved_per_pair(model) -> dict[str, float]:
    """Bytes autograd saves per pair in the per-voxel stage and the loss of ``model``, counted on K = 64
    classes and 16^3 voxels under CPU bf16 autocast; inputs created before the stage are not counted (the
    stage's float32 copy of the voxel features, per voxel and not per pair, adds 4 C_v / K bytes)."""
    import torch

    from medmoe.seg.loss import partial_label_loss

    torch.manual_seed(0)
    cfg = model.config
    b, k, n = 1, 64, 16**3
    voxel_channels = model.router.voxel_proj.in_channels
    voxel = torch.randn(b, voxel_channels, n, dtype=torch.bfloat16, requires_grad=True)
    experts = [torch.randn(b, cfg.expert_channels, n, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(model.num_scales)]
    text = torch.randn(k, model.text_dim)
    bottleneck = torch.randn(b, model.heads.image_proj.in_features, 2, 2, 2)
    saved: list[torch.Tensor] = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        queries = model.router.queries(text)
        layers = model.heads.layers(model.heads.head_params(bottleneck, text))
        known = {t.untyped_storage().data_ptr() for t in (voxel, *experts, *queries, layers[0][0])}
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            logits, _ = model._voxel_stage(queries, layers, voxel, experts)
        stage = _new_storage_bytes(saved, known)
        saved.clear()
        target = torch.rand(b, k, n) < 0.1
        known = {logits.untyped_storage().data_ptr(), target.untyped_storage().data_ptr()}
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            partial_label_loss(logits, target, torch.ones(b, k, dtype=torch.bool))
        loss = _new_storage_bytes(saved, known)
    return {"per_voxel_stage": stage / (b * k * n), "loss": loss / (b * k * n)}


def gpu_estimate(args) -> dict:
    """Bytes of the per-voxel stage and the loss for ``--gpu-model`` at ``--patch``, ``--k``, ``--gpu-batch``."""
    import medmoe

    model = medmoe.create_model(args.gpu_model, pretrained=False, text={"model": "tiny-bert"}).train()
    cfg = model.config
    table = per_pair_bytes(model.num_scales, cfg.expert_channels, cfg.head_hidden)
    voxels = args.patch**3
    pairs_stage = args.gpu_batch * args.k * voxels // cfg.fusion_scale**3
    pairs_loss = args.gpu_batch * args.k * voxels
    budget = model.chunk_elements
    chunk_pairs = min(pairs_stage, budget // cfg.expert_channels)
    stage, loss = table["per_voxel_stage"], table["loss"]
    unchunked = pairs_stage * (stage["kept"] + stage["transient"])
    chunked = pairs_stage * 4 + chunk_pairs * (stage["kept"] + stage["transient"])  # bf16 logits: chunks + joined
    gb = 1e-9
    return {
        "model": args.gpu_model, "patch": args.patch, "k": args.k, "batch": args.gpu_batch,
        "fusion_scale": cfg.fusion_scale, "autocast": "bf16", "per_pair_bytes": table,
        "per_pair_saved_bytes_measured_cpu_bf16": {key: round(v, 1) for key, v in saved_per_pair(model).items()},
        "fused_tensor_gb": round(pairs_stage * cfg.expert_channels * 2 * gb, 2),
        "per_voxel_stage_unchunked_gb": round(unchunked * gb, 2),
        "per_voxel_stage_chunked_gb": round((chunked if chunk_pairs < pairs_stage else unchunked) * gb, 2),
        "chunk_elements": budget, "chunks": -(-pairs_stage // chunk_pairs),
        "loss_gb": round(pairs_loss * (loss["kept"] + loss["transient"]) * gb, 2),
        "note": "forward working set: kept-for-backward bytes of every chunk (unchunked) or of the chunks' "
                "logits plus one chunk recomputed in the backward (chunked); the backward adds the gradients "
                "of one stage's largest tensors. The loss runs on the whole patch either way.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mome-nano")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--k", type=int, default=117)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--fusion-scale", type=int, default=None, help="override the model's (1 full, 2 half)")
    parser.add_argument("--text", default="tiny-bert", help="text tower (frozen; its size does not matter here)")
    parser.add_argument("--gpu-model", default="mome-swinunetr")
    parser.add_argument("--gpu-batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    results = {}
    for arm in args.arms:
        cmd = [sys.executable, __file__, "--child", arm, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results[arm] = {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
            continue
        results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"benchmark": "mome_training_step_memory", "device": args.device,
           "cpu": platform.processor() or platform.machine(), "model": args.model, "patch": args.patch,
           "k": args.k, "batch": args.batch, **results}
    base = results.get("unchunked", {}).get("peak_mb")
    for arm in ("cpu_chunks", "budget"):
        if base and "peak_mb" in results.get(arm, {}):
            row[f"{arm}_peak_ratio"] = round(results[arm]["peak_mb"] / base, 3)
            row[f"{arm}_time_ratio"] = round(results[arm]["seconds"] / results["unchunked"]["seconds"], 3)
    row["gpu_estimate"] = gpu_estimate(args)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
