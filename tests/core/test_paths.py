"""Atomic text writes: the mode a plain open() would give, strings or chunks."""

from __future__ import annotations

import subprocess
import sys


def test_an_atomic_write_keeps_the_umask_and_takes_chunks(tmp_path):
    # a user's umask 077 keeps outputs (reports, metrics) private; the temporary file's 0600 is not kept
    # either: under umask 022 the file is 0644, as open() would make it
    script = (
        "import os, stat, sys; os.umask(int(sys.argv[2], 8)); from pathlib import Path\n"
        "from medmoe.paths import write_text_atomic\n"
        "p = Path(sys.argv[1]); write_text_atomic(p, (f'{i}\\n' for i in range(3)))\n"
        "print(oct(stat.S_IMODE(p.stat().st_mode)), repr(p.read_text()))\n"
    )
    for umask, mode in (("077", "0o600"), ("022", "0o644")):
        target = tmp_path / f"out-{umask}.txt"
        out = subprocess.run([sys.executable, "-c", script, str(target), umask], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [mode, repr("0\n1\n2\n")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
