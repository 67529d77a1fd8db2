"""Small numerical helpers shared by pegleg's fitters."""

from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear

__all__ = ["bounded_lstsq", "bounded_lstsq_reduced"]


def bounded_lstsq(A: np.ndarray, b: np.ndarray, lb, ub=np.inf) -> np.ndarray:
    """Solve ``min ||A x - b||`` subject to ``lb <= x <= ub``.

    Tall systems (pixels x a few components) are first reduced by a QR factorisation:
    the bounded solve on the small triangular system ``R x = Q^T b`` has the same
    solution and is ~100x cheaper than running BVLS on ``A`` itself.
    """
    Q, R = np.linalg.qr(A)
    return bounded_lstsq_reduced(R, Q.T @ b, lb, ub)


def bounded_lstsq_reduced(R: np.ndarray, qtb: np.ndarray, lb, ub=np.inf) -> np.ndarray:
    """The bounded solve on an already QR-reduced system ``R x = Q^T b``."""
    return lsq_linear(R, qtb, bounds=(lb, ub), method="bvls").x
