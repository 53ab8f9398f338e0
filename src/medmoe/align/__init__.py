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

from medmoe.lazy_exports import lazy_package

lazy_package(globals(), {
    ".model": "MedMoE", ".config": "MedMoEConfig", ".task": "AlignTask AlignTaskConfig",
    ".zeroshot": "ZeroShotClassifier", ".retrieval": "retrieval_metrics", ".probe": "linear_probe",
    ".embed": "embed_manifest", ".index": "build_index SearchIndex",
})
