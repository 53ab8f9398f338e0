"""MedMoE: image–report alignment with modality experts (arXiv 2506.08356).

Entry points (imported on first use, so that ``import medmoe.align`` stays light):

- the model: :class:`MedMoE` and its :class:`MedMoEConfig` (built by ``medmoe.create_model("medmoe-nano")``);
- training: :class:`AlignTask` / :class:`AlignTaskConfig`, run by :func:`medmoe.train.run_training`
  (``medmoe align train``);
- use: :class:`ZeroShotClassifier` (``medmoe align zeroshot``), :func:`retrieval_metrics`,
  :func:`linear_probe`, :func:`embed_manifest`, :func:`build_index` and :class:`SearchIndex`
  (``medmoe align index`` / ``search``).

    >>> from medmoe.align import ZeroShotClassifier  # doctest: +SKIP
"""

from __future__ import annotations

from medmoe.lazy_exports import lazy_getattr

_EXPORTS = {
    "MedMoE": "medmoe.align.model",
    "MedMoEConfig": "medmoe.align.config",
    "AlignTask": "medmoe.align.task",
    "AlignTaskConfig": "medmoe.align.task",
    "ZeroShotClassifier": "medmoe.align.zeroshot",
    "retrieval_metrics": "medmoe.align.retrieval",
    "linear_probe": "medmoe.align.probe",
    "embed_manifest": "medmoe.align.embed",
    "build_index": "medmoe.align.index",
    "SearchIndex": "medmoe.align.index",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
