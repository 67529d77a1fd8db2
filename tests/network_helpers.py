"""A small random posterior network shared by the tests (not a test module)."""

import numpy as np


def random_network(filters=("F150W", "F277W", "F444W"), seed=0, diag_bias=0.0, width=16, transform=None, prior=None):
    """An untrained :class:`~pegleg.sed.npe.PosteriorNetwork` (one ``width``-unit layer, K=2 heads)
    over ``filters``, fitting ``log_metallicity`` and ``av``; ``diag_bias`` is added to the raw
    diagonals of the proposal's Cholesky factors (wider proposals); ``transform``/``prior``
    go into the metadata (default: none, i.e. the logit transform)."""
    from pegleg.sed.npe import MASS_PER_FLUX, SUMMARY_NAMES, PosteriorNetwork, head_size

    rng = np.random.default_rng(seed)
    names = ["log_metallicity", "av"]
    nin, w = 3 * len(filters) + 2, width
    da, db = len(names) + 1, len(SUMMARY_NAMES)
    meta = {"filters": list(filters), "param_names": names + [MASS_PER_FLUX], "bounds": [[-2, 0.2], [0, 4]],
            "summary_names": list(SUMMARY_NAMES), "n_components": [2, 2], "activation": "silu",
            "redshift_range": [0.1, 7.0]}
    if transform is not None:
        meta["transform"] = transform
    if prior is not None:
        meta["prior"] = prior
    bA = np.zeros(head_size(2, da))
    bA[2 + 2 * da:2 + 4 * da] = diag_bias          # raw diagonals of the proposal's Cholesky factors
    return PosteriorNetwork([rng.normal(0, 0.3, (nin, w))], [np.zeros(w)],
                            rng.normal(0, 0.1, (w, head_size(2, da))), bA,
                            rng.normal(0, 0.1, (w, head_size(2, db))), np.zeros(head_size(2, db)),
                            np.zeros(nin), np.ones(nin), np.zeros(da), np.ones(da), np.zeros(db), np.ones(db), meta)
