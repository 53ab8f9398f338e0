"""The MedMoE paper's evaluation protocols on public test sets, in one call each.

    >>> from medmoe.align.suites import run_zeroshot_suite, format_zeroshot_table
    >>> result = run_zeroshot_suite(model, "/data/medmoe-eval")       # Table 1: nine zero-shot sets
    >>> print(format_zeroshot_table(result))                           # the paper's rows next to yours

``run_probe_suite`` does Table 2 (linear probes at 1 / 10 / 100 % of the labels). The sets, their folders
under the root, classes and prompt ensembles are in :mod:`medmoe.align.suites.sets`; the paper's values
(MedMoE, arXiv 2506.08356, Tables 1 and 2) in :mod:`medmoe.align.suites.paper`. See docs/protocols.md.
"""

from medmoe.align.suites.report import format_probe_table, format_zeroshot_table, write_suite_json
from medmoe.align.suites.runner import embed_rows, load_set, run_probe_suite, run_zeroshot_suite
from medmoe.align.suites.sets import EVAL_SETS, PROBE_SETS, ZEROSHOT_SETS, EvalSet, select_sets

__all__ = [
    "EVAL_SETS",
    "PROBE_SETS",
    "ZEROSHOT_SETS",
    "EvalSet",
    "embed_rows",
    "format_probe_table",
    "format_zeroshot_table",
    "load_set",
    "run_probe_suite",
    "run_zeroshot_suite",
    "select_sets",
    "write_suite_json",
]
