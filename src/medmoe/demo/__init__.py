"""The end-to-end demo (`medmoe demo`): built-in data -> MedMoE vs one expert -> MoME -> report.html.

An application layer like the CLI: it may import the trainer; the library never imports it.
"""

from medmoe.demo.pipeline import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
