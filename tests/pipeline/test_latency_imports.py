"""Import only what the command needs: ``trainflow --help`` and a cached ``trainflow run``
import no torch (issue 14). Seconds are measured by bench/cli_latency.py, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.imports import code_version, constructor_signature

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The CLI in this process, with a note of the heavy libraries loaded, written at the very end
# (the first exit handler registered runs last).
WRAPPER = """
import atexit, json, sys
note = sys.argv.pop(1)
def _note():
    with open(note, "w") as f:
        json.dump(sorted({m.partition(".")[0] for m in sys.modules}), f)
atexit.register(_note)
sys.argv[0] = "trainflow"
from flows.cli import app  # not main: its fast exit would skip the note
app()
"""


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               TRAINFLOW_PROJECT_DIR=str(project), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _loaded(args: list[str], project: Path, note: Path) -> tuple[set[str], str]:
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(note), *args], env=_env(project),
                          cwd=project, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return set(json.loads(note.read_text())), proc.stdout


def test_help_imports_no_torch_prefect_or_mlflow(tmp_path: Path) -> None:
    loaded, out = _loaded(["--help"], tmp_path, tmp_path / "modules.json")
    assert "run" in out and "stack" in out
    assert not loaded & {"torch", "prefect", "mlflow"}


@pytest.mark.slow
def test_cached_run_imports_no_torch(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    small = ["--set", "trainer.max_epochs=1", "--set", "export.torchscript=false",
             "--set", "model.kwargs={hidden: 16}"]  # checked against DigitsMLP: no import
    first, _ = _loaded(["run", *small], project, tmp_path / "first.json")
    assert "torch" in first  # the fresh run trains: the check below can tell the difference
    loaded, out = _loaded(["run", *small], project, tmp_path / "cached.json")
    for stage in ("prepare_data", "train", "evaluate", "export", "register"):
        assert any(stage in line and "Cached" in line for line in out.splitlines()), out
    assert "torch" not in loaded


def test_main_keeps_the_exit_code_and_the_last_lines(tmp_path: Path) -> None:
    """``main`` ends the process without Python's module teardown: the exit code, stdout and
    the one-line error on stderr are still what the command produced."""
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=_env(tmp_path),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)

    ok = cli("--help")
    assert ok.returncode == 0 and "stack" in ok.stdout
    bad = cli("run", "--set", "trainer.max_epochs=0")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: trainer.max_epochs")
    unknown = cli("promote", "digits-mlp", "x")
    assert unknown.returncode == 2 and "VERSION" in unknown.stderr


def test_code_version_reads_the_source_without_importing_it(tmp_path: Path) -> None:
    """A model module imports torch: the user source behind a class is found and hashed
    without running it (the module below fails when imported), and an edit still counts."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "lat_helper.py").write_text("WIDTH = 4\n")
    net = code / "lat_net.py"
    net.write_text("from lat_helper import WIDTH\n\nclass Net:\n    pass\n\n"
                   "raise RuntimeError('imported')\n")
    sys.path.insert(0, str(code))
    try:
        before = code_version("lat_net:Net")  # would raise 'imported' if imported
        assert "lat_net" not in sys.modules and "lat_helper" not in sys.modules
        (code / "lat_helper.py").write_text("WIDTH = 8\n")
        assert code_version("lat_net:Net") != before  # a reached helper's edit counts
    finally:
        sys.path.remove(str(code))


def test_constructor_signature_reads_the_source_without_importing_it(tmp_path: Path) -> None:
    """model.kwargs are checked against the class's ``__init__`` as the source states it (its
    own, or a base's from another file); a class whose source does not say plainly is None."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "sig_base.py").write_text(
        "class Base:\n    def __init__(self, width: int = 4, *, depth=2, **extra):\n"
        "        pass\n\nraise RuntimeError('imported')\n")
    (code / "sig_net.py").write_text(
        "import functools\nfrom sig_base import Base\n\nclass Net(Base):\n    pass\n\n"
        "@functools.total_ordering\nclass Odd(Base):\n    pass\n\n"
        "raise RuntimeError('imported')\n")
    sys.path.insert(0, str(code))
    try:
        sig = constructor_signature("sig_net:Net")  # would raise 'imported' if imported
        assert "sig_net" not in sys.modules and "sig_base" not in sys.modules
        assert sig is not None
        assert list(sig.parameters) == ["self", "width", "depth", "extra"]
        assert sig.parameters["width"].default == 4
        assert sig.parameters["extra"].kind is sig.parameters["extra"].VAR_KEYWORD
        assert constructor_signature("sig_net:Odd") is None  # a decorator may change it
        assert constructor_signature("sig_net:Missing") is None
    finally:
        sys.path.remove(str(code))
