"""Thyroid ultrasound (RadImageNet's thyroid downstream task, as UniMed-CLIP evaluates it) -> ``benign`` / ``malignant``.

Source: RadImageNet (github.com/BMEII-AI/RadImageNet) publishes ``thyroid/dataframe/thyroid_{train,val,test}
_fold{1..5}.csv`` (header ``filename,label``; ``filename`` relative to the task folder, e.g.
``images/....png``) beside ``thyroid/images/``; UniMed-CLIP (github.com/mbzuai-oryx/UniMed-CLIP,
``clipeval/datasets.py``) reads fold 1's test CSV from its ``thyroid_us`` folder, columns by position. Both
layouts read::

    ROOT/dataframe/thyroid_{train,val,test}_fold1.csv     RadImageNet (ROOT = the thyroid task folder)
    ROOT/images/...
    ROOT/thyroid_test_fold1.csv                           UniMed-CLIP's thyroid_us/ folder
    ROOT/<the image files the CSVs name>

The first column is the image path and the second the label, ``benign`` or ``malignant``. The test CSV is
required; train and val CSVs are read when present. Other folds are chosen with ``fold``. The reading is
:func:`medmoe.data.adapters.unimed_folds.import_fold_layout`'s.
"""

from __future__ import annotations

from medmoe.data.adapters.unimed_folds import fold_adapter

NAME = "thyroid-us"

import_thyroid_us = fold_adapter(NAME)
