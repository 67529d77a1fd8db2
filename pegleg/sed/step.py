"""The ``sedfit`` step: per-pixel (or per-bin) SED posteriors of a stamp Dataset.

:func:`sedfit` takes every pixel of the fitted region (default: the source's segment
when the Dataset has a ``segmentation`` map, else every pixel), converts ``image`` and
``error`` to uJy, fits them with :func:`pegleg.sed.fit.fit_photometry` and returns a
new Dataset with the maps listed in :data:`pegleg.schema.PHYSICAL` (16/50/84
percentiles along ``quantile``), ``chi2``, ``n_bands``, ``snr``, ``ess``,
``information_gain``, ``sedfit_flag``, ``model_image``, ``sed_residual`` and optionally
``posterior_samples``.

The seed's "sum of pixels vs integrated" check is stored in attributes: the pixel-sum
stellar mass and SFR100 (16/50/84 percentiles of the sum over pixels of independent
posterior draws), the same from one fit of the summed photometry of the region, and
their difference in dex (``sedfit_mass_difference_dex`` = pixel sum - integrated,
medians).

With a ``bin_id`` map (``ds.pegleg.bin``) and ``binned=True`` (the default when it is
present) each bin is fitted once on its summed photometry
(:func:`pegleg.binning.binned`: errors in quadrature times the correlated-noise
``covariance_factor`` recorded by ``bin``, if any); the
bin's intensive results (A_V, ages, sSFR, metallicity, chi2, ...) are painted on its
pixels and its extensive ones (masses, SFRs) shared among them in proportion to each
pixel's flux in the reference band (``posterior_samples``' formed mass too, so a
sum over pixels of draw ``k`` is draw ``k`` of the bins they cover).

Per-pixel fits run by blocks of rows (``block_pixels`` pixels each).  With
``out="file.nc"`` every block is written to the file as soon as it is fitted and the
result comes back lazily opened, so a million-pixel mosaic opened lazily
(``pegleg.open_dataset(path, chunks={})``) is fitted in memory bounded by the block
size, not by the image: the outputs are identical to an in-memory run with the same
``block_pixels``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import schema as S
from ..exceptions import FitError, SchemaError
from .fit import INFO_QUANTITIES, N_TOTAL_DRAWS, QUANTITIES, effective_error, fit_photometry

__all__ = ["sedfit", "pixel_area_kpc2", "FLAG_NOT_FITTED"]

FLAG_NOT_FITTED = 4
_EXTENSIVE = ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_mass_formed")
_OUT_NAMES = {"log_stellar_mass": S.LOG_STELLAR_MASS, "log_sfr100": S.LOG_SFR100, "log_sfr10": S.LOG_SFR10,
              "log_ssfr": S.LOG_SSFR, "av": S.AV, "log_age_mw": S.LOG_AGE_MW,
              "log_metallicity": S.LOG_METALLICITY, "log_mass_formed": S.LOG_MASS_FORMED,
              "redshift": S.REDSHIFT_FIT}


def pixel_area_kpc2(pixel_scale: float, redshift: float) -> float:
    """Physical area of one pixel (kpc^2) at ``redshift``: flat LCDM, H0 = 70, Om0 = 0.3 (as bagpipes)."""
    from ..cosmology import pixel_area_kpc2 as area

    return area(pixel_scale, redshift)


def _to_ujy(units: str) -> float:
    import astropy.units as u

    return float(u.Unit(S.check_flux_unit(units)).to(u.uJy))


def band_photometry(ds: xr.Dataset, bands, scale: float | None = None):
    """(image, error, valid) of ``bands``, each (band, y, x), in uJy (``scale``: image
    unit -> uJy, read from the Dataset when None).  ``valid``: unmasked, finite, error > 0
    -- the pixels a fit uses."""
    if scale is None:
        scale = _to_ujy(S.image_units(ds))
    sub = ds.sel({S.BAND: list(bands)})
    img = np.asarray(sub[S.IMAGE].values, dtype=float) * scale
    err = np.asarray(sub[S.ERROR].values, dtype=float) * scale
    msk = np.asarray(sub[S.MASK].values).astype(bool)
    valid = ~msk & np.isfinite(img) & np.isfinite(err) & (err > 0)
    return img, err, valid


def region_photometry(ds: xr.Dataset, bands, region: np.ndarray):
    """Integrated photometry of a boolean (y, x) ``region``: per band the summed flux and
    the quadrature-summed error of its valid pixels (uJy; see :func:`band_photometry`), and
    whether the band has any valid pixel there.  Neighbouring pixels of PSF-matched images
    are correlated, so the error is a lower limit."""
    img, err, valid = band_photometry(ds, bands)
    ok = valid & np.asarray(region, bool)[None]
    flux = np.where(ok, img, 0.0).sum(axis=(1, 2))
    error = np.sqrt((np.where(ok, err, 0.0) ** 2).sum(axis=(1, 2)))
    return flux, error, ok.any(axis=(1, 2))


def _region(ds: xr.Dataset, region) -> np.ndarray:
    return S.fit_region(ds, region)[0]


class _Setup:
    """Everything a block needs that is decided once for the whole Dataset."""

    def __init__(self, ds, redshift, emulator, bands, region, reference_band, binned):
        from .emulator import load_emulator

        if redshift is None:
            redshift = ds.attrs.get(S.REDSHIFT)
        if redshift is None:
            raise FitError("no redshift: pass redshift= or set ds.attrs['redshift']")
        self.redshift = float(redshift)
        self.emu = emu = load_emulator("default") if emulator is None else (
            load_emulator(emulator) if isinstance(emulator, str) else emulator)
        self.all_bands = all_bands = [str(b) for b in ds[S.BAND].values]
        bands = all_bands if bands is None else [str(b) for b in ([bands] if isinstance(bands, str) else bands)]
        missing = [b for b in bands if b not in all_bands]
        if missing:
            raise SchemaError(f"bands {missing} are not in the Dataset (bands: {all_bands})")
        unknown = []
        for b in bands:
            try:
                emu.filter_index([b])
            except Exception:
                unknown.append(b)
        if unknown:
            raise FitError(f"bands {unknown} are not emulated by {emu.name}; fit the others with "
                           f"bands=[...] (emulated filters: {', '.join(emu.filters)})")
        if reference_band is None:
            reference_band = "F444W" if "F444W" in bands else max(
                bands, key=lambda b: float(ds[S.WAVELENGTH].sel({S.BAND: b})))
        if reference_band not in bands:
            raise SchemaError(f"reference_band {reference_band!r} is not among the fitted bands {bands}")
        self.bands, self.reference_band, self.iref = bands, reference_band, bands.index(reference_band)
        self.scale = _to_ujy(S.image_units(ds))
        self.region = _region(ds, region)
        if binned is None:
            binned = S.BIN_ID in ds
        if binned and S.BIN_ID not in ds:
            raise SchemaError("binned=True needs a 'bin_id' map (run ds.pegleg.bin first)")
        self.binned = bool(binned)

    def photometry(self, ds):
        """(image, error in uJy, valid) of the fitted bands, each (band, y, x)."""
        return band_photometry(ds, self.bands, self.scale)


class _Totals:
    """Running sums over pixels (or bins) for the pixel-sum and integrated checks."""

    def __init__(self, n_bands: int):
        self.mass = np.zeros(N_TOTAL_DRAWS)
        self.sfr = np.zeros(N_TOTAL_DRAWS)
        self.n_fitted = 0
        self.rchi, self.ess = [], []
        self.flux = np.zeros(n_bands)
        self.var = np.zeros(n_bands)
        self.good = np.zeros(n_bands, bool)
        self.seconds = 0.0

    def add(self, res, flux, error, ok):
        fitted = np.isfinite(res["mass_draws"]).all(axis=1)
        self.n_fitted += int(fitted.sum())
        self.mass += np.sum(10.0 ** res["mass_draws"][fitted].astype(float), axis=0)
        self.sfr += np.sum(10.0 ** res["sfr_draws"][fitted].astype(float), axis=0)
        self.rchi.append(res["chi2"] / np.maximum(res["n_bands"] - 1, 1))
        self.ess.append(res["ess"])
        self.flux += np.where(ok, flux, 0.0).sum(axis=0)
        self.var += (np.where(ok, error, 0.0) ** 2).sum(axis=0)
        self.good |= ok.any(axis=0)
        self.seconds += float(res["seconds"])

    def attrs(self, setup, fit_kw, integrated: bool) -> dict:
        attrs = {}
        if self.n_fitted:
            attrs["sedfit_log_mass_pixel_sum"] = np.percentile(np.log10(self.mass), [16, 50, 84])
            attrs["sedfit_log_sfr100_pixel_sum"] = np.percentile(np.log10(self.sfr), [16, 50, 84])
        attrs["sedfit_n_fitted"] = int(self.n_fitted)
        rchi = np.concatenate(self.rchi) if self.rchi else np.zeros(0)
        ess = np.concatenate(self.ess) if self.ess else np.zeros(0)
        attrs["sedfit_median_reduced_chi2"] = float(np.nanmedian(rchi)) if np.isfinite(rchi).any() else np.nan
        attrs["sedfit_median_ess"] = float(np.nanmedian(ess)) if np.isfinite(ess).any() else np.nan
        attrs["sedfit_seconds"] = self.seconds
        if integrated and self.n_fitted:
            kw = dict(fit_kw)
            kw.update(method="importance" if kw["method"] != "nested" else "nested", n_samples=0,
                      n_draws=max(1024, kw["n_draws"]), max_rounds=12, progress=False, n_workers=1,
                      mass_range=(kw["mass_range"][0], kw["mass_range"][1] + 3))
            integ = fit_photometry(self.flux[None, :], np.sqrt(self.var)[None, :], setup.bands, setup.redshift,
                                   valid=self.good[None, :], **kw)
            attrs["sedfit_log_mass_integrated"] = integ["log_stellar_mass"][0]
            attrs["sedfit_log_sfr100_integrated"] = integ["log_sfr100"][0]
            attrs["sedfit_integrated_ess"] = float(integ["ess"][0])
            if "sedfit_log_mass_pixel_sum" in attrs:
                attrs["sedfit_mass_difference_dex"] = float(attrs["sedfit_log_mass_pixel_sum"][1]
                                                            - integ["log_stellar_mass"][0, 1])
                attrs["sedfit_sfr_difference_dex"] = float(attrs["sedfit_log_sfr100_pixel_sum"][1]
                                                           - integ["log_sfr100"][0, 1])
        return {k: (np.asarray(v, dtype=float) if np.ndim(v) else v) for k, v in attrs.items()}


def _coords(setup, keep_samples: int) -> dict:
    coords = {S.QUANTILE: (S.QUANTILE, np.array([0.16, 0.5, 0.84]), {"units": "1", "long_name": "posterior quantile"}),
              S.INFO_QUANTITY: (S.INFO_QUANTITY, np.array(INFO_QUANTITIES),
                                {"units": "1", "long_name": "quantity of the information gain"})}
    if keep_samples:
        coords[S.SAMPLE] = (S.SAMPLE, np.arange(keep_samples), {"units": "1", "long_name": "posterior draw"})
        coords[S.PARAM] = (S.PARAM, np.array(setup.emu.param_names), {"units": "1", "long_name": "emulator parameter"})
    return coords


def _maps(ds, setup, res, src, frac, img, err, valid, reg, fit_kw) -> dict:
    """The output maps of one block (or of the whole grid) from the fit results ``res``.

    ``src`` (pixels of the block, raveled) indexes the row of ``res`` painted on each
    pixel (-1: not fitted); ``frac`` is each pixel's share of its bin's extensive
    quantities (1 for per-pixel fits, NaN outside bins).
    """
    ny, nx = reg.shape
    npix = ny * nx
    binned = setup.binned

    def paint(arr, fill=np.nan):
        arr = np.asarray(arr)
        outp = np.full((npix,) + arr.shape[1:], fill, dtype=np.result_type(arr.dtype, type(fill)))
        has = src >= 0
        outp[has] = arr[src[has]]
        return outp

    shift = np.log10(np.where(frac > 0, frac, np.nan))
    data_vars = {}
    for key in QUANTITIES:
        if key == "redshift" and fit_kw["redshift_sigma"] is None:
            continue
        m = paint(res[key])
        if binned and key in _EXTENSIVE:
            m = m + shift[:, None]
        data_vars[_OUT_NAMES[key]] = S.variable(_OUT_NAMES[key], m.reshape(ny, nx, 3), ds)
    area = pixel_area_kpc2(float(ds.attrs[S.PIXEL_SCALE]), setup.redshift)
    smd = 10.0 ** data_vars[S.LOG_STELLAR_MASS][1] / area
    sfd = 10.0 ** data_vars[S.LOG_SFR100][1] / area
    data_vars[S.STELLAR_MASS_DENSITY] = S.variable(S.STELLAR_MASS_DENSITY, smd, ds, pixel_area_kpc2=area)
    data_vars[S.SFR_DENSITY] = S.variable(S.SFR_DENSITY, sfd, ds)
    flag = paint(res["flag"].astype(np.int16), fill=np.int16(FLAG_NOT_FITTED)).reshape(ny, nx)
    data_vars[S.SEDFIT_FLAG] = S.variable(S.SEDFIT_FLAG, flag, ds)
    data_vars[S.CHI2] = S.variable(S.CHI2, paint(res["chi2"]).reshape(ny, nx), ds)
    data_vars[S.N_BANDS] = S.variable(S.N_BANDS, paint(res["n_bands"], fill=0).reshape(ny, nx), ds)
    data_vars[S.ESS] = S.variable(S.ESS, paint(res["ess"]).reshape(ny, nx), ds)
    data_vars[S.INFORMATION_GAIN] = S.variable(S.INFORMATION_GAIN,
                                               paint(res["information_gain"]).reshape(ny, nx, -1), ds)
    iref = setup.iref
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(valid[iref], img[iref] / err[iref], np.nan)
    data_vars[S.SNR] = S.variable(S.SNR, np.where(reg, snr, np.nan), ds, band=setup.reference_band)
    model = paint(res["model_flux"])
    if binned:
        model = model * frac[:, None]
    model = model.T.reshape(len(setup.bands), ny, nx)
    model_full = np.full((len(setup.all_bands), ny, nx), np.nan)
    resid_full = np.full((len(setup.all_bands), ny, nx), np.nan)
    from .simulate import emulator_fraction

    fit_frac = (emulator_fraction(setup.emu, setup.bands) if fit_kw["emulator_sigma"]
                else np.zeros(len(setup.bands)))
    for j, b in enumerate(setup.bands):
        k = setup.all_bands.index(b)
        model_full[k] = model[j] / setup.scale
        ef = effective_error(img[j], err[j], fit_kw["error_floor"], fit_frac[j])
        with np.errstate(divide="ignore", invalid="ignore"):
            resid_full[k] = np.where(valid[j] & reg, (img[j] - model[j]) / ef, np.nan)
    data_vars[S.MODEL_IMAGE] = S.variable(S.MODEL_IMAGE, model_full, ds)
    data_vars[S.SED_RESIDUAL] = S.variable(S.SED_RESIDUAL, resid_full, ds)
    if fit_kw["n_samples"]:
        smp = paint(res["samples"])                                 # (pixels, sample, param)
        if binned:
            # each pixel's draws carry its share of the bin's formed mass (the same draw k of
            # every pixel of a bin is one draw of the bin), so sums over pixels are the bin's
            im = list(setup.emu.param_names).index("log_mass_formed")
            smp[:, :, im] += shift[:, None]
        smp = smp.reshape(ny, nx, fit_kw["n_samples"], -1)
        data_vars[S.POSTERIOR_SAMPLES] = S.variable(S.POSTERIOR_SAMPLES, smp, ds)
    return data_vars


def _with_maps(ds, data_vars: dict, coords: dict) -> xr.Dataset:
    """``ds`` plus the output maps (earlier outputs of the same names replaced)."""
    out = ds.copy()
    drop = [name for name in data_vars if name in out]
    if drop:
        out = out.drop_vars(drop)
    out = out.assign_coords({k: v for k, v in coords.items() if k not in out.coords or k == S.QUANTILE})
    return out.assign(data_vars)


def _fit_binned(ds, setup, fit_kw, totals):
    """Fit each bin's summed photometry once; paint intensive results and share extensive ones.

    The bins' photometry is :func:`pegleg.binning.binned` of the region's bins, so the
    correlated-noise ``covariance_factor`` recorded by ``bin()`` enlarges their errors.
    """
    from ..binning import binned as binned_photometry

    img, err, valid = setup.photometry(ds)
    scale = setup.scale
    reg = setup.region
    bin_id = np.where(reg, ds[S.BIN_ID].values.astype(int), -1)
    ids = np.unique(bin_id[bin_id >= 0])
    flat_bin = bin_id.ravel()
    if ids.size:
        region_bins = ds.assign({S.BIN_ID: ds[S.BIN_ID].copy(data=bin_id)})
        tab = binned_photometry(region_bins, setup.bands)
        flux = tab[S.BIN_FLUX].transpose(S.BIN, S.BAND).values * scale
        error = tab[S.BIN_ERROR].transpose(S.BIN, S.BAND).values * scale
    else:
        flux = error = np.zeros((0, len(setup.bands)))
    ok = np.isfinite(flux) & np.isfinite(error) & (error > 0)
    flux, error = np.where(ok, flux, 0.0), np.where(ok, error, 0.0)
    res = fit_photometry(flux, error, setup.bands, setup.redshift, valid=ok, **fit_kw)
    totals.add(res, flux, error, ok)
    # share weights of extensive quantities: the intrinsic model of the reference band when
    # the Dataset has one (smooth and positive), else its flux; floored at 1e-3 of the bin
    # mean so no pixel of a bin gets zero mass
    if S.MODEL in ds:
        ref_pix = np.nan_to_num(ds[S.MODEL].sel({S.BAND: setup.reference_band}).values * scale).ravel()
    else:
        ref_pix = np.where(valid[setup.iref], img[setup.iref], 0.0).ravel()
    ref_pix = np.clip(ref_pix, 0, None)
    inbin = flat_bin >= 0
    pos = np.full(flat_bin.shape, -1)
    lut = np.full(ids.max() + 1 if ids.size else 1, -1)
    lut[ids] = np.arange(ids.size)
    pos[inbin] = lut[flat_bin[inbin]]
    count = np.bincount(pos[inbin], minlength=ids.size)
    mean = np.bincount(pos[inbin], ref_pix[inbin], minlength=ids.size) / np.maximum(count, 1)
    ref_pix = np.where(inbin, np.maximum(ref_pix, 1e-3 * mean[np.maximum(pos, 0)]), 0.0)
    tot = np.bincount(pos[inbin], ref_pix[inbin], minlength=ids.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(tot[np.maximum(pos, 0)] > 0, ref_pix / tot[np.maximum(pos, 0)],
                        1.0 / np.maximum(count[np.maximum(pos, 0)], 1))
    frac = np.where(inbin, frac, np.nan)
    return _maps(ds, setup, res, pos, frac, img, err, valid, reg, fit_kw)


def _fit_pixel_block(block, setup, fit_kw, totals, y0, first_chunk):
    """Fit the region's pixels of one block of rows; returns (maps, chunks used)."""
    img, err, valid = setup.photometry(block)
    ny, nx = block.sizes[S.Y], block.sizes[S.X]
    reg = setup.region[y0:y0 + ny]
    F = len(setup.bands)
    pix_index = np.flatnonzero(reg.ravel())
    flux = img.reshape(F, -1)[:, pix_index].T
    error = err.reshape(F, -1)[:, pix_index].T
    ok = valid.reshape(F, -1)[:, pix_index].T
    res = fit_photometry(flux, error, setup.bands, setup.redshift, valid=ok, first_chunk=first_chunk, **fit_kw)
    totals.add(res, flux, error, ok)
    src = np.full(ny * nx, -1)
    src[pix_index] = np.arange(pix_index.size)
    return _maps(block, setup, res, src, np.ones(ny * nx), img, err, valid, reg, fit_kw), res["n_chunks"]


def _concat_maps(parts: list[dict]) -> dict:
    """Join the per-block maps along y."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for name, (dims, _, attrs) in parts[0].items():
        out[name] = (dims, np.concatenate([p[name][1] for p in parts], axis=dims.index(S.Y)), attrs)
    return out


def sedfit(ds: xr.Dataset, *, redshift=None, redshift_sigma=None, method: str = "importance",
           emulator=None, network=None, bands=None, region=None, reference_band: str | None = None,
           error_floor: float = 0.05, emulator_sigma: bool = True, mass_range=(0.0, 13.0),
           n_draws: int = 128, max_rounds: int = 4, low_ess: str = "flag", keep_samples: int = 0,
           integrated: bool = True,
           binned: bool | None = None,
           seed: int = 0, chunk_size: int = 256, n_workers: int | None = None,
           progress: bool | None = None, out=None, block_pixels: int = 16_384) -> xr.Dataset:
    """Per-pixel (or per-bin) SED posteriors; see the module docstring.

    Parameters
    ----------
    ds : stamp Dataset, usually PSF-corrected (``deconvolve``) or PSF-matched; may be
        lazily opened (``pegleg.open_dataset(path, chunks={})``).
    redshift : fixed redshift (default ``ds.attrs['redshift']``), or the mean of a
        Gaussian photo-z prior of width ``redshift_sigma`` (marginalised).
    method : ``"importance"`` (default), ``"fast"`` or ``"nested"``
        (:func:`pegleg.sed.fit.fit_photometry`).
    emulator, network : SED emulator and posterior network (default: bundled).
    bands : bands to fit (default: all; every one must be emulated).
    region : None (segment if any, else all), ``"segment"``, ``"all"`` or a bool (y, x) map.
    reference_band : band of the ``snr`` map and of the flux weights of binned maps
        (default F444W if present, else the reddest band).
    error_floor, emulator_sigma, mass_range, n_draws, max_rounds : see ``fit_photometry``
        (the default keeps the most pixels above ESS 50; ``n_draws=160, max_rounds=2`` is
        the speed setting, ~3.6x faster with median ESS 60-61 on prior pixels at S/N 5-100).
    low_ess : ``"flag"`` (default) or ``"nested"``: pixels (bins) whose importance-sampling
        ESS stays below 50 are flagged, or re-fitted by nested sampling (``sedfit_flag &
        8``; tens of seconds each: meant for binned fits and small regions).
    keep_samples : store this many equally weighted posterior parameter draws per
        pixel as ``posterior_samples`` (y, x, sample, param).
    integrated : also fit the region's summed photometry (attributes).
    binned : fit per bin of ``bin_id`` (default: when ``bin_id`` is present).
    seed, chunk_size, n_workers, progress : reproducibility and execution (``n_workers``
        default: the usable cores for importance and nested sampling, 1 for the fast
        mode; results do not depend on it; see ``fit_photometry``).
    out : path of a NetCDF file: every block of rows is written there as soon as it is
        fitted (atomically: the file appears complete or not at all) and the result is
        returned lazily opened from it.  Peak memory then depends on ``block_pixels``,
        not on the image size (binned fits are done in memory, then written).
    block_pixels : pixels per block of rows (at least one row); results depend on it
        only through the random streams of the draws (each block starts new ones).

    Returns
    -------
    xarray.Dataset
        ``ds`` plus the maps listed in the module docstring and the ``sedfit_*``
        attributes (lazy, read from ``out``, when ``out`` is given).
    """
    from ..io.netcdf import BlockWriter, open_dataset, to_netcdf

    S.validate(ds)
    setup = _Setup(ds, redshift, emulator, bands, region, reference_band, binned)
    block_pixels = S.check_positive_int(block_pixels, "block_pixels")
    max_rounds = S.check_positive_int(max_rounds, "max_rounds")
    fit_kw = dict(method=method, emulator=setup.emu, network=network, n_draws=n_draws, max_rounds=max_rounds,
                  low_ess=low_ess,
                  error_floor=error_floor,
                  emulator_sigma=emulator_sigma, mass_range=mass_range, redshift_sigma=redshift_sigma,
                  n_samples=keep_samples, seed=seed, chunk_size=chunk_size, n_workers=n_workers)
    params = dict(redshift=setup.redshift, redshift_sigma=redshift_sigma, method=method,
                  emulator=getattr(setup.emu, "name", str(emulator)),
                  network=str(network) if network is not None else "default", bands=setup.bands,
                  region="<array>" if not (region is None or isinstance(region, str)) else region,
                  reference_band=setup.reference_band, error_floor=error_floor, emulator_sigma=emulator_sigma,
                  mass_range=list(mass_range), n_draws=n_draws, max_rounds=max_rounds, low_ess=low_ess,
                  keep_samples=keep_samples, binned=setup.binned,
                  seed=seed, block_pixels=block_pixels)
    totals = _Totals(len(setup.bands))
    coords = _coords(setup, keep_samples)

    def finish(attrs_from):
        attrs = dict(attrs_from)
        attrs.update(totals.attrs(setup, fit_kw, integrated))
        return S.append_history(xr.Dataset(attrs=attrs), "sedfit", params).attrs

    if setup.binned:
        result = _with_maps(ds, _fit_binned(ds.load(), setup, dict(fit_kw, progress=progress), totals), coords)
        result.attrs = finish(result.attrs)
        if out is not None:
            to_netcdf(result, out)
        return result

    ny, nx = ds.sizes[S.Y], ds.sizes[S.X]
    rows = max(1, block_pixels // max(nx, 1))
    starts = list(range(0, ny, rows))
    many = len(starts) > 1
    from .._parallel import progress_iter

    kw = dict(fit_kw, progress=False if many else progress)

    def fitted_blocks():
        """(input block, its maps) in order; every block continues the random streams."""
        first_chunk = 0
        for y0 in progress_iter(starts, len(starts), progress if many else False, f"sedfit ({method}) blocks"):
            block = ds.isel({S.Y: slice(y0, y0 + rows)})
            if out is not None:
                block = block.load()        # one block of a lazily opened input in memory
            maps, used = _fit_pixel_block(block, setup, kw, totals, y0, first_chunk)
            first_chunk += used
            yield block, maps
            del block, maps                 # not held while the next block is fitted

    if out is None:
        result = _with_maps(ds, _concat_maps([maps for _, maps in fitted_blocks()]), coords)
        result.attrs = finish(result.attrs)
        return result
    with BlockWriter(out, S.Y) as writer:
        for block, maps in fitted_blocks():
            writer.append(_with_maps(block, maps, coords))
            del block, maps
        writer.attrs = finish(ds.attrs)
    return open_dataset(out, chunks={})
