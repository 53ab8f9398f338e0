"""`medmoe export`: write a model as ONNX graphs (+ export.json) and check them against PyTorch."""

from __future__ import annotations

import argparse
import json

from medmoe.cli.arguments import add_command

EPILOG = """\
what is written to DIR:
  MedMoE  image_encoder.onnx  images (B,3,H,W) -> image_embeds (B,E), router_probs (B,K), expert_index (B,)
          text_encoder.onnx   input_ids, attention_mask (B,L) -> text_embeds (B,E);  tokenizer/
  MoME    mome.onnx           volume (B,1,D,H,W), text_emb (K,T) -> logits (B,K,D,H,W);  class_embeddings.npz
  both    export.json         model, config hash, inputs / outputs, opset, exporter, parity results

examples:
  medmoe export --model runs/align/model --out exported/medmoe
  medmoe export --model mome-nano --out exported/mome --overwrite
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(sub, "export", run, epilog=EPILOG)
    parser.add_argument("--model", required=True, metavar="M",
                        help="a saved model directory, or a registered name (e.g. mome-nano: untrained weights)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace files a previous export left in DIR")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity tolerance on values (default: 1e-4)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: the exporter's: 20 with torch 2.13; 18 when the TorchScript exporter "
                             "is the fallback)")
    parser.add_argument("--json", action="store_true", help="print export.json instead of a summary")


def run(args: argparse.Namespace) -> int:
    """export a model to ONNX, checked against PyTorch with onnxruntime

    Export a MedMoE (routed image encoder + text encoder) or a MoME (forward with the prompt
    embeddings as an input) to ONNX. Every graph is then run with onnxruntime on random inputs
    and compared with PyTorch: a difference above --atol or another routing choice is an error
    (exit 1) unless --no-check; export.json records the figures either way.
    """
    from pathlib import Path

    from medmoe.cli.models import model_from_flag
    from medmoe.errors import InvalidInputError
    from medmoe.export import export_onnx, planned_paths

    if args.atol <= 0:
        raise InvalidInputError(f"--atol {args.atol}: expected a positive tolerance")
    out = Path(args.out)
    model = model_from_flag(args.model)
    existing = [p.name for p in planned_paths(model, out) if p.exists()]
    if existing and not args.overwrite:  # checked again by export_onnx; here before any tracing
        raise InvalidInputError(f"{out}: would overwrite {', '.join(existing)}; pass --overwrite to replace them")
    manifest = export_onnx(model, out, name=args.model, overwrite=args.overwrite, check=not args.no_check,
                           atol=args.atol, opset=args.opset)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    for graph in manifest["graphs"].values():
        parity = graph.get("parity")
        summary = "not checked" if parity is None else (
            f"parity ok, max |diff| {max(v for k, v in parity['max_abs_diff'].items() if k not in parity['exact']):.2e}"
            + (", routing identical" if parity["routing_identical"] else ""))
        print(f"{out / graph['file']}: {graph['exporter']} exporter, opset {graph['opset']}, "
              f"{graph['export_s']:.1f} s, {summary}")
    print(f"{out / 'export.json'}")
    return 0

