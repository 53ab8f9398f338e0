"""Memory and time of ``backbone.gradient_checkpointing`` on the Swin-T backbone, relative to no checkpointing.

Each setting runs in a fresh process so that one's peak cannot hide the other's. Per setting, one training
step (forward + backward of the feature pyramid) is measured for:

- ``peak_mb``: peak memory of the step above what the model and batch hold (CUDA: max_memory_allocated;
  CPU: growth of the process's peak resident set, ru_maxrss);
- ``saved_mb``: activations kept for the backward pass outside checkpointed blocks (saved-tensor hooks);
- ``seconds``: the best of ``--repeats`` steps.

Prints one JSON object with ``peak_ratio`` and ``time_ratio`` (checkpointing / none).

    python benchmarks/bench_checkpointing.py [--batch 4] [--image-size 224] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys


def measure(checkpointing: bool, batch: int, image_size: int, repeats: int, device_name: str) -> dict:
    import resource
    import time

    import torch

    from medmoe.align.config import BackboneConfig
    from medmoe.backbones.swin import SwinPyramid

    device = torch.device(device_name)
    torch.manual_seed(0)
    net = SwinPyramid(BackboneConfig(image_size=image_size, drop_path_rate=0.0,
                                     gradient_checkpointing=checkpointing)).to(device).train()
    images = torch.randn(batch, 3, image_size, image_size, device=device)

    def step(count_saved: bool = False) -> int:
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if count_saved else None
        if hooks is not None:
            with hooks:
                out = net(images)
        else:
            out = net(images)
        sum(f.square().mean() for f in out.features).backward()
        net.zero_grad(set_to_none=True)
        return saved[0]

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    saved = step(count_saved=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"peak_mb": round(peak / 2**20, 1), "saved_mb": round(saved / 2**20, 1), "seconds": round(min(times), 3),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "on", args.batch, args.image_size, args.repeats, args.device)))
        return
    results = {}
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--child", mode, "--batch", str(args.batch), "--image-size",
               str(args.image_size), "--repeats", str(args.repeats), "--device", args.device]
        results[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    off, on = results["off"], results["on"]
    print(json.dumps({
        "benchmark": "swin_gradient_checkpointing",
        "device": args.device, "cpu": platform.processor() or platform.machine(), "threads": off["threads"],
        "batch": args.batch, "image_size": args.image_size, "repeats": args.repeats,
        "off": off, "on": on,
        "peak_ratio": round(on["peak_mb"] / off["peak_mb"], 3) if off["peak_mb"] > 0 else None,
        "saved_ratio": round(on["saved_mb"] / off["saved_mb"], 3),
        "time_ratio": round(on["seconds"] / off["seconds"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
