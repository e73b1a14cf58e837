"""The train stage's code version covers the user source behind the model class: its module,
base classes in other files and imported helpers, so editing any of them retrains."""

import importlib
import sys
import textwrap

import pytest

from tasks.imports import code_version


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """Three user files: a helper block, a base class importing it, the model on the base."""
    monkeypatch.syspath_prepend(str(tmp_path))
    files = {
        "cv_blocks.py": "import torch\n\ndef block(n):\n    return torch.nn.Linear(n, n)\n",
        "cv_base.py": "from cv_blocks import block\n\nclass Base:\n    width = 4\n",
        "cv_model.py": "from cv_base import Base\n\nclass Net(Base):\n    pass\n",
        "cv_unrelated.py": "X = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("cv_")]:
        del sys.modules[mod]


def _version_after_reload(folder) -> str:
    for mod in [m for m in sys.modules if m.startswith("cv_")]:
        del sys.modules[mod]
    importlib.invalidate_caches()
    return code_version("cv_model:Net")


@pytest.mark.parametrize("edited", ["cv_model.py", "cv_base.py", "cv_blocks.py"])
def test_editing_any_reached_module_changes_the_version(user_code, edited):
    before = _version_after_reload(user_code)
    path = user_code / edited
    path.write_text(path.read_text() + "\n# edited\n")
    assert _version_after_reload(user_code) != before


def test_unreached_and_installed_modules_do_not_count(user_code):
    before = _version_after_reload(user_code)
    (user_code / "cv_unrelated.py").write_text("X = 2\n")  # not imported by the model
    assert _version_after_reload(user_code) == before
