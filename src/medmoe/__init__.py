"""medmoe: medical vision-language Mixture-of-Experts.

MedMoE (image-report alignment) and MoME (text-prompted 3-D CT segmentation) on one shared MoE core.

    >>> import medmoe
    >>> model = medmoe.create_model("medmoe-nano")
    >>> model.save_pretrained("out/nano"); model = medmoe.create_model("out/nano")   # or medmoe.load_model

The names below are imported on first use, so that ``import medmoe`` (and ``medmoe --help``) does not load
torch.
"""

from medmoe.lazy_exports import lazy_getattr

__version__ = "0.1.0"
_EXPORTS = {"create_model": "medmoe.registry", "list_models": "medmoe.registry",
            "register_family": "medmoe.registry", "register_model": "medmoe.registry", "load_model": "medmoe.saved_model"}
__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
