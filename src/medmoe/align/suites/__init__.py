"""The MedMoE paper's evaluation protocols on public test sets, in one call each.

    >>> from medmoe.align.suites import run_zeroshot_suite, format_zeroshot_table
    >>> result = run_zeroshot_suite(model, "/data/medmoe-eval")       # Table 1: nine zero-shot sets
    >>> print(format_zeroshot_table(result))                           # the paper's rows next to yours

``run_probe_suite`` does Table 2 (linear probes at 1 / 10 / 100 % of the labels). The sets, their folders
under the root, classes and prompt ensembles are in :mod:`medmoe.align.suites.sets`; the paper's values
(MedMoE, arXiv 2506.08356, Tables 1 and 2) in :mod:`medmoe.align.suites.paper`. See docs/protocols.md.
"""

from medmoe.lazy_exports import lazy_package

lazy_package(globals(), {
    ".report": "format_probe_table format_zeroshot_table write_suite_json",
    ".runner": "embed_rows load_set run_probe_suite run_zeroshot_suite",
    ".sets": "EVAL_SETS PROBE_SETS ZEROSHOT_SETS EvalSet select_sets",
})
