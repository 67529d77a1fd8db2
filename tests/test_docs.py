"""The documentation builds with no warnings (sphinx -W), example notebooks included.

The notebooks in ``examples/`` reach the Sphinx source tree through the relative symlink
``docs/examples -> ../examples`` and are rendered by myst-nb with their stored outputs
(``nb_execution_mode = "off"``: the build never runs them).
"""

import os
import re
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
    html = tmp_path / "html"
    assert (html / "api.html").exists()
    tutorial = (html / "tutorial.html").read_text(encoding="utf-8")
    for name in ("01_synthetic_galaxy", "02_real_galaxy_jof36"):
        page = html / "examples" / f"{name}.html"
        assert page.exists(), f"notebook page {name} not built"
        assert f'href="examples/{name}.html"' in tutorial, f"tutorial does not link {name}"
        text = page.read_text(encoding="utf-8")
        # the notebook's saved outputs are on the page: a printed number and its figures
        assert re.search(r"pixel sum - integrated: [+-]\d\.\d{3} dex", text), name
        images = re.findall(r'<img [^>]*src="\.\./_images/([^"]+\.png)"', text)
        assert images, f"no figure on the {name} page"
        assert all((html / "_images" / img).stat().st_size > 1000 for img in images)


def test_included_files_exist():
    """Every file a page includes (``{include}``, ``{literalinclude}``; the ``_generated/`` numbers
    written by scripts among them) exists and is not empty: a quick check without Sphinx."""
    pattern = re.compile(r"^\s*```\{(?:include|literalinclude)\}\s+(\S+)", re.MULTILINE)
    refs = []
    for page in sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("_generated/*.md")):
        for target in pattern.findall(page.read_text(encoding="utf-8")):
            refs.append((page, target, (page.parent / target).resolve()))
    generated = [r for r in refs if "_generated/" in r[1]]
    assert len(generated) >= 10, generated  # the validation page alone includes more
    missing = [f"{p.name}: {t}" for p, t, path in refs if not path.is_file() or path.stat().st_size == 0]
    assert not missing, f"included files missing or empty: {missing}"


def test_public_api_is_documented_with_units():
    """Every public function and class (``__all__`` of every pegleg module) and every accessor
    method has a docstring; functions taking a physical quantity (pixel scale, radius, size,
    wavelength, flux, ...) name its unit (or say it is a redshift / fraction / per-unit value)."""
    import importlib
    import inspect
    import pkgutil
    import re

    import pegleg
    from pegleg import accessor

    unit_params = {"pixel_scale", "radius", "radii", "size", "wavelength", "redshift", "r_e", "fwhm", "depth",
                   "sky", "flux"}
    unit_words = re.compile(r"arcsec|pixel|uJy|micron|\bum\b|kpc|Msun|mag|Jy|dex|redshift|unit|degree|\bdeg\b|"
                            r"seconds|fraction", re.I)
    names = ["pegleg"] + [m.name for m in pkgutil.walk_packages(pegleg.__path__, "pegleg.")
                          if not m.name.rsplit(".", 1)[-1].startswith("_")]
    undocumented, no_units, checked = [], [], 0
    for name in names:
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            checked += 1
            doc = inspect.getdoc(obj) or ""
            if not doc.strip():
                undocumented.append(f"{name}.{attr}")
            elif inspect.isfunction(obj) and set(inspect.signature(obj).parameters) & unit_params \
                    and not unit_words.search(doc):
                no_units.append(f"{name}.{attr}")
    acc = [c for c in vars(accessor).values() if inspect.isclass(c) and c.__module__ == accessor.__name__]
    for cls in acc:
        for attr, fn in vars(cls).items():
            if not attr.startswith("_") and callable(fn) and not (inspect.getdoc(fn) or "").strip():
                undocumented.append(f"{cls.__name__}.{attr}")
    assert checked > 100
    assert not undocumented, undocumented
    assert not no_units, no_units
