"""The documentation builds with no warnings (sphinx -W)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"


@pytest.mark.skipif(shutil.which("sphinx-build") is None and
                    subprocess.run([sys.executable, "-c", "import sphinx"]).returncode != 0,
                    reason="sphinx not installed (install the 'docs' or 'test' extra)")
def test_docs_build_without_warnings(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": ""}
    res = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert (tmp_path / "html" / "api.html").exists()
