"""The example notebooks (``examples/*.ipynb``): stored executed, clean and light; re-executed (slow).

Default run: the stored notebooks are valid nbformat, fully executed in order with no error
or stderr output, free of this machine's absolute paths, small, and the numbers they print
hold.  ``-m slow``: re-execute them with nbclient (needs the ``examples`` extra; 02 also
needs the shared data) and check the same numbers.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SYNTHETIC = "01_synthetic_galaxy.ipynb"
REAL = "02_real_galaxy_jof36.ipynb"
NOTEBOOKS = [SYNTHETIC, REAL]
MAX_BYTES = 1_500_000

#: Absolute paths that must not leak into a committed notebook (sources or outputs).
_PATH_PATTERNS = [r"/work/", r"/home/", r"/Users/", r"/tmp/", r"/root/", r"[A-Za-z]:\\Users"] + [
    re.escape(str(p)) for p in (ROOT, ROOT.parent) if len(p.parts) > 2]


def _load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _stdout(nb: dict) -> str:
    """Everything the notebook printed (stdout streams)."""
    return "".join(_text(o["text"]) for c in _code_cells(nb) for o in c.get("outputs", [])
                   if o["output_type"] == "stream" and o.get("name") == "stdout")


def _number(text: str, label: str) -> float:
    m = re.search(re.escape(label) + r"\s*([+-]?\d+(?:\.\d+)?)", text)
    assert m, f"{label!r} not printed by the notebook"
    return float(m.group(1))


def _check_synthetic_numbers(out: str) -> None:
    """Measured: pixel sum - integrated -0.012 dex; pixel sum, integrated and profile total within
    0.026 dex of the truth; mass profile within 0.05 dex of the true profile inside 5 r50."""
    assert abs(_number(out, "pixel sum - integrated:")) < 0.2
    for label in ("pixel sum - truth:", "integrated - truth:", "mass profile total - truth:"):
        assert abs(_number(out, label)) < 0.15, label
    assert _number(out, "max |d|") < 0.2
    assert _number(out, "median reduced chi2") < 2
    assert "reopened identical: True" in out


def _check_real_numbers(out: str) -> None:
    """Measured on JOF-36: 792 pixels, median reduced chi2 1.16, pixel sum - integrated +0.065 dex."""
    assert abs(_number(out, "pixel sum - integrated:")) < 0.2
    assert _number(out, "median reduced chi2") < 3
    assert _number(out, "z =") == pytest.approx(4.135, abs=0.01)
    m = re.search(r"(\d+) pixels fitted", out)
    assert m and int(m.group(1)) > 500
    assert "reopened identical: True" in out


def _check_executed(nb: dict, name: str) -> None:
    cells = _code_cells(nb)
    assert cells, name
    counts = [c.get("execution_count") for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{name}: not executed top to bottom: {counts}"
    for i, c in enumerate(cells):
        assert _text(c["source"]).strip(), f"{name}: empty code cell {i}"
        for o in c.get("outputs", []):
            assert o["output_type"] != "error", f"{name}: cell {i} raised {o.get('ename')}: {o.get('evalue')}"
            assert not (o["output_type"] == "stream" and o.get("name") == "stderr"), \
                f"{name}: cell {i} wrote to stderr (unhandled warning?): {_text(o['text'])[:300]}"


def _machine_paths(nb: dict) -> list[str]:
    """Absolute paths found in sources and text outputs (images skipped: base64)."""
    texts = []
    for c in nb["cells"]:
        texts.append(_text(c["source"]))
        for o in c.get("outputs", []):
            if "text" in o:
                texts.append(_text(o["text"]))
            for mime, value in o.get("data", {}).items():
                if not mime.startswith("image/"):
                    texts.append(_text(value) if not isinstance(value, dict) else json.dumps(value))
            texts.extend(_text(t) for t in o.get("traceback", []))
    blob = "\n".join(texts)
    return [m.group(0) for p in _PATH_PATTERNS for m in re.finditer(p, blob)]


# -- stored notebooks (default run) ------------------------------------------------------

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_nbformat(name):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (install the 'examples' extra)")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_executed_and_clean(name):
    nb = _load(name)
    _check_executed(nb, name)
    assert _machine_paths(nb) == [], f"{name}: absolute paths of this machine in the notebook"
    assert (EXAMPLES / name).stat().st_size < MAX_BYTES
    assert any("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.get("outputs", [])), \
        f"{name}: no figure stored"


def test_stored_numbers_hold():
    _check_synthetic_numbers(_stdout(_load(SYNTHETIC)))
    _check_real_numbers(_stdout(_load(REAL)))


def test_readme_lists_notebooks():
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        assert name in text
    assert "examples" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_real_notebook_finds_data_relatively():
    """The data folder is looked up as $PEGLEG_DATA or ../shared/data next to the repository."""
    src = "".join(_text(c["source"]) for c in _code_cells(_load(REAL)))
    assert "PEGLEG_DATA" in src and '"shared" / "data"' in src and "os.path.relpath" in src


# -- re-execution (slow) ------------------------------------------------------------------

def _data_present() -> bool:
    roots = [Path(os.environ["PEGLEG_DATA"])] if os.environ.get("PEGLEG_DATA") else []
    roots.append(ROOT.parent / "shared" / "data")
    return any((r / "jades-origins-field" / "galaxies" / "36").is_dir() for r in roots)


def _execute(name: str) -> dict:
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (install the 'examples' extra)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (install the 'examples' extra)")
    pytest.importorskip("ipykernel", reason="ipykernel not installed (install the 'examples' extra)")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with warnings.catch_warnings():
        # jupyter_client/zmq deprecations in *this* process are not the notebook's business;
        # the notebook's own warnings reach its stderr stream, which _check_executed rejects
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Kernel is running over TCP without encryption.*")
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                                         resources={"metadata": {"path": str(EXAMPLES)}})
        client.execute()
    return json.loads(nbformat.writes(nb))


@pytest.mark.slow
def test_synthetic_notebook_executes():
    nb = _execute(SYNTHETIC)
    _check_executed(nb, SYNTHETIC)
    assert _machine_paths(nb) == []
    _check_synthetic_numbers(_stdout(nb))


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not _data_present(), reason="JOF-36 data not found ($PEGLEG_DATA or ../shared/data)")
def test_real_notebook_executes():
    nb = _execute(REAL)
    _check_executed(nb, REAL)
    assert _machine_paths(nb) == []
    _check_real_numbers(_stdout(nb))
