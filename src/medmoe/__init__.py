"""medmoe: medical vision-language Mixture-of-Experts.

MedMoE (image-report alignment) and MoME (text-prompted 3-D CT segmentation) on one shared MoE core.

    >>> import medmoe
    >>> model = medmoe.create_model("medmoe-nano")
    >>> model.save_pretrained("out/nano"); model = medmoe.create_model("out/nano")   # or medmoe.load_model

The names below are imported on first use, so that ``import medmoe`` (and ``medmoe --help``) does not load
torch.
"""

from medmoe.lazy_exports import lazy_package

__version__ = "0.1.0"
lazy_package(globals(), {".registry": "create_model list_models register_family register_model",
                         ".saved_model": "load_model"}, also=("__version__",))
