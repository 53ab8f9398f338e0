"""medmoe: medical vision-language Mixture-of-Experts.

MedMoE (image-report alignment) and MoME (text-prompted 3-D CT segmentation) on one shared MoE core.

    >>> import medmoe
    >>> model = medmoe.create_model("medmoe-nano")
    >>> model.save_pretrained("out/nano"); model = medmoe.create_model("out/nano")   # or medmoe.load_model
"""

from medmoe.hub import load_model
from medmoe.registry import create_model, list_models, register_family, register_model

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "load_model", "register_family", "register_model"]
