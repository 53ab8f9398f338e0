"""MoME: text-prompted 3-D CT segmentation with experts on the decoder scales (arXiv 2510.26996).

Entry points (imported on first use, so that ``import medmoe.seg`` stays light):

- the model: :class:`MoME` and its :class:`MoMEConfig` (built by ``medmoe.create_model("mome-nano")``);
- data: :func:`import_dataset` (``medmoe seg import``: a public layout to a datalist), :func:`check_datalist`
  (``medmoe seg check``);
- training: :class:`SegTask` / :class:`SegTaskConfig`, run by :func:`medmoe.train.run_training`
  (``medmoe seg train``);
- use: :func:`predict_volume` and :func:`save_prediction` (``medmoe seg predict``);
  :func:`medmoe.seg.evaluate.evaluate` (``medmoe seg eval``).

    >>> from medmoe.seg import predict_volume  # doctest: +SKIP
"""

from __future__ import annotations

from medmoe.lazy_exports import lazy_package

lazy_package(globals(), {
    ".model": "MoME", ".config": "MoMEConfig", ".task": "SegTask SegTaskConfig", ".importers": "import_dataset",
    ".check": "check_datalist", ".predict": "predict_volume save_prediction",
})
