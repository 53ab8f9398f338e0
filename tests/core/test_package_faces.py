"""``medmoe.align`` and ``medmoe.seg`` name their entry points, importable by name without importing torch first."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["medmoe.align", "medmoe.seg"])
def test_package_face_names_resolve_and_importing_it_is_light(package):
    code = (f"import sys, importlib; m = importlib.import_module({package!r}); light = 'torch' not in sys.modules; "
            "missing = [n for n in m.__all__ if getattr(m, n, None) is None]; print(light, missing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "[]"]
