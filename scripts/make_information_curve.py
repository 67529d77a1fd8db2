#!/usr/bin/env python
"""The information-gain curve of the docs: KL divergence of posterior from prior vs S/N.

Runs :func:`pegleg.sed.information.information_curve` (pixels drawn from the prior, 19 JOF
bands, z = 2, 200 pixels per S/N, the bundled emulator and posterior network) and writes
``docs/_static/information_curve.png`` and ``docs/_generated/information_curve.txt`` (the
median and 16-84% per S/N and the S/N where each median reaches 0.5 nat).  A few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pegleg.sed.information import information_curve

    curve = information_curve()
    lines = ["# made by scripts/make_information_curve.py",
             f"pixels drawn from the prior, {curve.attrs['n_per_snr']} per S/N, 19 JOF bands, z = "
             f"{curve.attrs['redshift']:g}, error floor {curve.attrs['error_floor']:g}; KL divergence of posterior "
             "from prior (nat), median [16-84%]",
             "S/N   " + "".join(f"{str(q):>26s}" for q in curve["info_quantity"].values)]
    for i, s in enumerate(curve["snr"].values):
        row = "".join(f"{curve['median'].values[i, j]:12.2f} [{curve['p16'].values[i, j]:4.2f}-"
                      f"{curve['p84'].values[i, j]:5.2f}] " for j in range(curve.sizes["info_quantity"]))
        lines.append(f"{s:5.0f} {row}")
    for q in curve["info_quantity"].values:
        lines.append(f"S/N where the median reaches {curve.attrs['kl_level']:g} nat, {q}: "
                     f"{curve.attrs[f'snr_threshold_{q}']:.1f}")
    (ROOT / "docs" / "_generated" / "information_curve.txt").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for j, q in enumerate(curve["info_quantity"].values):
        s = curve["snr"].values
        ax.plot(s, curve["median"].values[:, j], "o-", label=str(q))
        ax.fill_between(s, curve["p16"].values[:, j], curve["p84"].values[:, j], alpha=0.2)
    ax.axhline(curve.attrs["kl_level"], color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("S/N in the reference band (F444W)")
    ax.set_ylabel("information gain (nat)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "_static" / "information_curve.png", dpi=110)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
