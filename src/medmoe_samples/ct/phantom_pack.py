"""The phantom CT pack: several partially labelled synthetic "datasets" and fully labelled held-out phantoms.

Each phantom dataset labels a different subset of organs with its own ids, grid and orientation, so that every
organ is labelled by some dataset but none labels all, and a training pipeline must resample and reorient.
The pack is a folder of NIfTI images and label maps with a Decathlon-style ``datalist.json`` whose
``label_maps`` section carries the label map of every dataset it uses.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medmoe.data.volumes import write_nifti
from medmoe_samples.ct.datalist import datalist_entry, write_datalist
from medmoe_samples.ct.phantoms import FULL_LABELS, Grid, relabel, render_phantom

logger = logging.getLogger(__name__)

PHANTOM_TEST_DATASET = "synthetic-phantom"

# Each phantom dataset labels a different subset with its own ids, grid and stored orientation, so that every
# organ is labelled by some dataset but none labels all, and the pipeline must resample and reorient.
PHANTOM_DATASETS: dict[str, dict] = {
    "phantom-A": {
        "labels": {1: "liver", 2: "liver_tumour", 3: "spleen", 4: "gallbladder", 5: "stomach"},
        "spacing": (2.8, 2.8, 3.0), "axcodes": "RAS",
    },
    "phantom-B": {
        "labels": {1: "kidney_right", 2: "kidney_left", 3: "kidney_tumour", 4: "spleen", 5: "aorta"},
        "spacing": (3.2, 3.2, 2.5), "axcodes": "LPS",
    },
    "phantom-C": {
        "labels": {1: "liver", 2: "kidney_right", 3: "kidney_left", 4: "pancreas", 5: "aorta", 6: "stomach"},
        "spacing": (3.0, 3.0, 4.0), "axcodes": "RAS",
    },
}
# Held-out test phantoms label every class. They take turns between the test grid and the grid and
# orientation of each training dataset, each under its own dataset name, so that an evaluation reports
# every organ per dataset style, including the organs that dataset never labels in training.
PHANTOM_TEST_STYLES: dict[str, dict] = {
    PHANTOM_TEST_DATASET: {"labels": FULL_LABELS, "spacing": (3.0, 3.0, 3.0), "axcodes": "LAS"},
    **{f"{name} held-out": {"labels": FULL_LABELS, "spacing": spec["spacing"], "axcodes": spec["axcodes"]}
       for name, spec in PHANTOM_DATASETS.items()},
}
# (train, validation) cases per dataset, and test cases.
PHANTOM_SIZES = {"full": (24, 2, 12), "quick": (4, 1, 4)}


def build_phantom_pack(out: str | os.PathLike, *, seed: int = 0, quick: bool = False, progress: bool = True,
                       sizes: tuple[int, int, int] | None = None) -> Path:
    """Write the phantom datasets and their datalist; returns the datalist path.

    Layout: ``out/<dataset>/{images,labels}/<case>.nii.gz`` and ``out/datalist.json`` with ``training``,
    ``validation`` (from phantom-A/B/C, partially labelled) and ``test`` (every class labelled, tumours in
    about half the cases; case i is stored like :data:`PHANTOM_TEST_STYLES` entry ``i % 4``:
    ``synthetic-phantom``, then ``phantom-A held-out`` on phantom-A's grid and orientation, and so on).

    Args:
        out: output folder (created; existing case files are overwritten).
        seed: base seed; the same seed gives identical files.
        quick: a handful of cases per dataset (for tests and smoke runs).
        progress: show a tqdm bar.
        sizes: (train, validation) cases per dataset and test cases, overriding ``quick``.
    """
    root = Path(out)
    n_train, n_val, n_test = sizes or PHANTOM_SIZES["quick" if quick else "full"]
    jobs = [(name, spec, (seed, d, i), "training" if i < n_train else "validation", f"{name}_{i:03d}")
            for d, (name, spec) in enumerate(PHANTOM_DATASETS.items()) for i in range(n_train + n_val)]
    styles = list(PHANTOM_TEST_STYLES.items())
    jobs += [(*styles[i % len(styles)], (seed, 99, i), "test", f"test_{i:03d}") for i in range(n_test)]
    datalist: dict = {
        "description": f"medmoe synthetic CT phantoms (seed {seed}{', quick' if quick else ''})",
        "label_maps": {name: {str(k): v for k, v in spec["labels"].items()}
                       for name, spec in {**PHANTOM_DATASETS, **PHANTOM_TEST_STYLES}.items()},
        "training": [], "validation": [], "test": [], "tumours": {},
    }
    for name, spec, case_seed, split, case in tqdm(jobs, desc="phantoms", disable=not progress):
        phantom = render_phantom(case_seed, Grid.make(spec["spacing"], spec["axcodes"]))
        folder = root / name.replace(" ", "-")
        image = write_nifti(phantom.image, phantom.affine, folder / "images" / f"{case}.nii.gz")
        label = write_nifti(relabel(phantom, spec["labels"]), phantom.affine, folder / "labels" / f"{case}.nii.gz",
                            dtype=np.uint8)
        datalist[split].append(datalist_entry(root, image, label, name))
        datalist["tumours"][case] = list(phantom.tumours)
    path = write_datalist(root, datalist)
    logger.info("wrote %d phantom cases and %s", len(jobs), path)
    return path
