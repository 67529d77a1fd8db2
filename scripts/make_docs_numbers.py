#!/usr/bin/env python
"""Regenerate the numbers the documentation quotes from test runs (not typed by hand).

Currently: the number of distinct malformed-input cases of the fuzz suite
(``tests/test_fuzz.py``, default run), written to ``docs/_generated/reliability.md``.

Usage::

    OMP_NUM_THREADS=1 python scripts/make_docs_numbers.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env = {**os.environ, "PEGLEG_WRITE_DOCS_NUMBERS": "1"}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                   cwd=ROOT, env=env, check=True)
    data = json.loads((ROOT / "docs" / "_generated" / "fuzz_cases.json").read_text())
    rows = "\n".join(f"| `{k}` | {v['cases']} | {v['raised_pegleg_error']} | {v['returned_valid_result']} |"
                     for k, v in data["by_entry_point"].items())
    text = (f"The default test run feeds **{data['distinct_cases']} distinct malformed inputs** to the public "
            "entry points; every one raised a `PeglegError` subclass or returned a valid result (with a "
            "documented `PeglegWarning` where inputs were repaired).\n\n"
            "| entry point | cases | raised a PeglegError | returned a valid result |\n|---|---|---|---|\n"
            f"{rows}\n")
    (ROOT / "docs" / "_generated" / "reliability.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
