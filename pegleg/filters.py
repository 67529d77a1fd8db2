"""Pivot wavelengths of the imaging filters pegleg knows by name.

Values are pivot wavelengths in micron from the instrument teams' tables
(JWST User Documentation for NIRCam and MIRI; the ACS and WFC3 instrument
handbooks), good to ~0.1%.  They label the ``wavelength`` coordinate and sort
bands; the SED engine integrates the full transmission curves.

Unqualified names (``"F814W"``) resolve to JWST/NIRCam or MIRI where unique and to
HST/ACS-WFC for the filters ACS shares with WFC3/UVIS; qualify a name to choose
(``"WFC3_F814W"``, ``"ACS_F814W"``, ``"NIRCAM_F444W"``, ``"MIRI_F770W"``).
A user's own filter is accepted everywhere once its wavelength is given
(``from_arrays(..., wavelength=...)``).
"""

from __future__ import annotations

from .exceptions import SchemaError

__all__ = ["PIVOT_WAVELENGTH", "pivot_wavelength", "instrument", "known_filters"]

_NIRCAM = {
    "F070W": 0.704, "F090W": 0.901, "F115W": 1.154, "F140M": 1.404, "F150W": 1.501,
    "F162M": 1.626, "F164N": 1.644, "F150W2": 1.671, "F182M": 1.845, "F187N": 1.874,
    "F200W": 1.990, "F210M": 2.093, "F212N": 2.120, "F250M": 2.503, "F277W": 2.786,
    "F300M": 2.996, "F322W2": 3.247, "F323N": 3.237, "F335M": 3.365, "F356W": 3.563,
    "F360M": 3.621, "F405N": 4.055, "F410M": 4.092, "F430M": 4.280, "F444W": 4.421,
    "F460M": 4.624, "F466N": 4.654, "F470N": 4.708, "F480M": 4.834,
}
_MIRI = {
    "F560W": 5.635, "F770W": 7.639, "F1000W": 9.953, "F1130W": 11.309,
    "F1280W": 12.810, "F1500W": 15.064, "F1800W": 17.984, "F2100W": 20.795,
    "F2550W": 25.365,
}
_ACS = {
    "F435W": 0.4329, "F475W": 0.4747, "F502N": 0.5023, "F550M": 0.5581,
    "F555W": 0.5361, "F606W": 0.5922, "F625W": 0.6311, "F658N": 0.6584,
    "F660N": 0.6599, "F775W": 0.7693, "F814W": 0.8045, "F850LP": 0.9031,
    "F892N": 0.8916,
}
_WFC3_UVIS = {
    "F218W": 0.2228, "F225W": 0.2372, "F275W": 0.2710, "F336W": 0.3355,
    "F390W": 0.3924, "F438W": 0.4326, "F475W": 0.4773, "F555W": 0.5308,
    "F606W": 0.5889, "F625W": 0.6242, "F775W": 0.7651, "F814W": 0.8039,
    "F850LP": 0.9176, "F390M": 0.3897, "F410M": 0.4109, "F467M": 0.4683,
    "F547M": 0.5447, "F621M": 0.6219, "F689M": 0.6876, "F763M": 0.7614,
    "F845M": 0.8437, "F475X": 0.4940, "F600LP": 0.7468, "F200LP": 0.4972,
    "F350LP": 0.5874,
}
_WFC3_IR = {
    "F098M": 0.9864, "F105W": 1.0552, "F110W": 1.1534, "F125W": 1.2486,
    "F140W": 1.3923, "F160W": 1.5369, "F127M": 1.2740, "F139M": 1.3838,
    "F153M": 1.5322,
}

#: Pivot wavelength (micron) of every known filter, by (qualified and unqualified) name.
PIVOT_WAVELENGTH: dict[str, float] = {}
_INSTRUMENT: dict[str, str] = {}
for _inst, _table in (("WFC3", _WFC3_UVIS), ("WFC3", _WFC3_IR), ("ACS", _ACS),
                      ("MIRI", _MIRI), ("NIRCAM", _NIRCAM)):
    for _name, _wl in _table.items():
        PIVOT_WAVELENGTH[f"{_inst}_{_name}"] = _wl
        # later tables win for unqualified names: NIRCam/MIRI, then ACS over WFC3/UVIS
        PIVOT_WAVELENGTH[_name] = _wl
        _INSTRUMENT[_name] = _inst
        _INSTRUMENT[f"{_inst}_{_name}"] = _inst


def known_filters() -> list[str]:
    """All filter names pegleg knows, sorted by pivot wavelength."""
    return sorted(PIVOT_WAVELENGTH, key=lambda n: (PIVOT_WAVELENGTH[n], n))


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"band name must be a non-empty string, got {name!r}")
    return name.strip().upper().replace("-", "_")


def pivot_wavelength(name: str) -> float:
    """Pivot wavelength of filter ``name`` in micron.

    Raises
    ------
    SchemaError
        If the filter is unknown (the message says how to give a wavelength).
    """
    key = _key(name)
    try:
        return PIVOT_WAVELENGTH[key]
    except KeyError:
        raise SchemaError(
            f"unknown band {name!r}: pegleg has no pivot wavelength for it; pass "
            "wavelength= (micron, one per band) or use a known name such as "
            "'F444W', 'F814W', 'WFC3_F160W'"
        ) from None


def instrument(name: str) -> str | None:
    """Instrument of a known filter (``"NIRCAM"``, ``"MIRI"``, ``"ACS"``, ``"WFC3"``) or None."""
    try:
        return _INSTRUMENT.get(_key(name))
    except SchemaError:
        return None
