"""The real-CT pack takes the TotalSegmentator sdist from an argument, the environment or .cache/, never the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmoe.cli.main import main
from medmoe.errors import MissingFileError
from medmoe_samples.ct.build import build_ct_samples
from medmoe_samples.ct.totalseg import (
    DEFAULT_SDIST,
    SDIST_ENV,
    TOTALSEG_SDIST_NAME,
    build_totalseg_pack,
    require_totalseg_sdist,
    totalseg_sdist_path,
)

pytestmark = pytest.mark.timeout(60)


def test_sdist_path_comes_from_the_argument_then_the_environment_then_dot_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(SDIST_ENV, raising=False)
    assert totalseg_sdist_path() == DEFAULT_SDIST == Path(".cache") / TOTALSEG_SDIST_NAME
    monkeypatch.setenv(SDIST_ENV, str(tmp_path / "env.tar.gz"))
    assert totalseg_sdist_path() == tmp_path / "env.tar.gz"
    assert totalseg_sdist_path(tmp_path / "arg.tar.gz") == tmp_path / "arg.tar.gz"


def test_a_missing_sdist_is_one_line_naming_the_file_and_how_to_get_it(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / TOTALSEG_SDIST_NAME
    with pytest.raises(MissingFileError) as caught:
        require_totalseg_sdist(missing)
    message = str(caught.value)
    assert "\n" not in message and str(missing) in message
    assert "make setup" in message
    assert "pip download --no-deps --no-binary :all: totalsegmentator==2.18.0 -d .cache" in message
    monkeypatch.setenv(SDIST_ENV, str(missing))
    with pytest.raises(MissingFileError, match="nowhere"):
        build_totalseg_pack(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ct_build_checks_the_sdist_before_rendering_phantoms(tmp_path):
    with pytest.raises(MissingFileError):
        build_ct_samples(tmp_path / "out", quick=True, sdist=tmp_path / "absent.tar.gz", progress=False)
    assert not (tmp_path / "out" / "phantoms").exists()


def test_cli_flag_names_the_missing_sdist(tmp_path, capsys):
    absent = tmp_path / "absent.tar.gz"
    code = main(["seg", "build-samples", "--out", str(tmp_path / "out"), "--quick", "--no-progress",
                 "--totalseg-sdist", str(absent)])
    assert code == 1
    assert str(absent) in capsys.readouterr().err


def test_the_library_never_imports_the_generators_and_they_start_no_process():
    import ast

    src = Path(__file__).resolve().parents[3] / "src"
    front_ends = ("cli", "demo")  # the only parts of medmoe allowed to import medmoe_samples (lazily)
    offenders = []
    for path in sorted((src / "medmoe").rglob("*.py")):
        if path.relative_to(src / "medmoe").parts[0] in front_ends:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(src)}: {n}" for n in names if n.split(".")[0] == "medmoe_samples"]
    assert not offenders
    generators = "\n".join(p.read_text(encoding="utf-8") for p in (src / "medmoe_samples").rglob("*.py"))
    assert "subprocess" not in generators and "sys.executable" not in generators
