"""The README's examples run as shown (Python blocks and the Quickstart shell block)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch copy of assets/ so the examples' outputs stay out of the repository."""
    shutil.copytree(REPO / "assets", tmp_path / "assets")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_examples(workdir):
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})


def test_quickstart_shell_block(workdir):
    quickstart = README.split("## Quickstart", 1)[1]
    script = re.search(r"```bash\n(.*?)```", quickstart, flags=re.S).group(1)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "tokens.safetensors").exists()
    # assets/ then holds sample.jpg and the decoded sample.png: their outputs keep the extensions.
    assert sorted(p.name for p in (workdir / "decoded").glob("*.png")) == ["sample.jpg.png", "sample.png.png"]
    assert (workdir / "cap.smc").stat().st_size <= 12000
