"""Export MedMoE and MoME for deployment outside Python (ONNX), checked against PyTorch.

Example:
    >>> from medmoe.export import export_onnx
    >>> manifest = export_onnx(medmoe.create_model("mome-nano"), "exported/")   # mome.onnx + export.json
    >>> manifest["graphs"]["mome"]["parity"]["ok"]
    True
"""

from medmoe.export.onnx import (
    EXPORT_FORMATS,
    ExportParityError,
    check_parity,
    export_onnx,
    model_graphs,
    planned_paths,
)

__all__ = ["EXPORT_FORMATS", "ExportParityError", "check_parity", "export_onnx", "model_graphs", "planned_paths"]
