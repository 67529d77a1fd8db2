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
present) each bin is fitted once on its summed photometry (errors in quadrature); the
bin's intensive results (A_V, ages, sSFR, metallicity, chi2, ...) are painted on its
pixels and its extensive ones (masses, SFRs) shared among them in proportion to each
pixel's flux in the reference band.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import schema as S
from ..exceptions import FitError, SchemaError
from .fit import INFO_QUANTITIES, QUANTITIES, effective_error, fit_photometry

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


def _region(ds: xr.Dataset, region) -> np.ndarray:
    return S.fit_region(ds, region)[0]


def sedfit(ds: xr.Dataset, *, redshift=None, redshift_sigma=None, method: str = "importance",
           emulator=None, network=None, bands=None, region=None, reference_band: str | None = None,
           error_floor: float = 0.05, emulator_sigma: bool = True, mass_range=(0.0, 13.0),
           n_draws: int = 128, keep_samples: int = 0, integrated: bool = True, binned: bool | None = None,
           seed: int = 0, chunk_size: int = 256, n_workers: int | None = 1,
           progress: bool | None = None) -> xr.Dataset:
    """Per-pixel (or per-bin) SED posteriors; see the module docstring.

    Parameters
    ----------
    ds : stamp Dataset, usually PSF-corrected (``deconvolve``) or PSF-matched.
    redshift : fixed redshift (default ``ds.attrs['redshift']``), or the mean of a
        Gaussian photo-z prior of width ``redshift_sigma`` (marginalised).
    method : ``"importance"`` (default), ``"fast"`` or ``"nested"``
        (:func:`pegleg.sed.fit.fit_photometry`).
    emulator, network : SED emulator and posterior network (default: bundled).
    bands : bands to fit (default: all; every one must be emulated).
    region : None (segment if any, else all), ``"segment"``, ``"all"`` or a bool (y, x) map.
    reference_band : band of the ``snr`` map and of the flux weights of binned maps
        (default F444W if present, else the reddest band).
    error_floor, emulator_sigma, mass_range, n_draws : see ``fit_photometry``.
    keep_samples : store this many equally weighted posterior parameter draws per
        pixel as ``posterior_samples`` (y, x, sample, param).
    integrated : also fit the region's summed photometry (attributes).
    binned : fit per bin of ``bin_id`` (default: when ``bin_id`` is present).
    seed, chunk_size, n_workers, progress : reproducibility and execution.
    """
    from .emulator import load_emulator

    S.validate(ds)
    if redshift is None:
        redshift = ds.attrs.get(S.REDSHIFT)
    if redshift is None:
        raise FitError("no redshift: pass redshift= or set ds.attrs['redshift']")
    redshift = float(redshift)
    emu = load_emulator("default") if emulator is None else (
        load_emulator(emulator) if isinstance(emulator, str) else emulator)
    all_bands = [str(b) for b in ds[S.BAND].values]
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
    sub = ds.sel({S.BAND: bands})
    scale = _to_ujy(S.image_units(ds))
    img = sub[S.IMAGE].values * scale
    err = sub[S.ERROR].values * scale
    msk = sub[S.MASK].values.astype(bool)
    ny, nx = ds.sizes[S.Y], ds.sizes[S.X]
    reg = _region(ds, region)
    iref = bands.index(reference_band)
    if binned is None:
        binned = S.BIN_ID in ds
    if binned and S.BIN_ID not in ds:
        raise SchemaError("binned=True needs a 'bin_id' map (run ds.pegleg.bin first)")

    valid = ~msk & np.isfinite(img) & np.isfinite(err) & (err > 0)
    if binned:
        bin_id = np.where(reg, ds[S.BIN_ID].values.astype(int), -1)
        ids = np.unique(bin_id[bin_id >= 0])
        flat_bin = bin_id.ravel()
        F = len(bands)
        fpix = np.where(valid, img, 0.0).reshape(F, -1)
        vpix = (err ** 2 * valid).reshape(F, -1)
        flux = np.stack([np.bincount(flat_bin[flat_bin >= 0], fpix[f, flat_bin >= 0], minlength=ids.max() + 1)[ids]
                         for f in range(F)], axis=1) if ids.size else np.zeros((0, F))
        var = np.stack([np.bincount(flat_bin[flat_bin >= 0], vpix[f, flat_bin >= 0], minlength=ids.max() + 1)[ids]
                        for f in range(F)], axis=1) if ids.size else np.zeros((0, F))
        error = np.sqrt(var)
        ok = var > 0
        pix_index = None
    else:
        pix_index = np.flatnonzero(reg.ravel())
        flux = img.reshape(len(bands), -1)[:, pix_index].T
        error = err.reshape(len(bands), -1)[:, pix_index].T
        ok = valid.reshape(len(bands), -1)[:, pix_index].T
    res = fit_photometry(flux, error, bands, redshift, valid=ok, method=method, emulator=emu, network=network,
                         n_draws=n_draws, error_floor=error_floor, emulator_sigma=emulator_sigma,
                         mass_range=mass_range, redshift_sigma=redshift_sigma, n_samples=keep_samples,
                         seed=seed, chunk_size=chunk_size, n_workers=n_workers, progress=progress)

    # -- paint results on the (y, x) grid ------------------------------------------
    npix = ny * nx
    if binned:
        # flux fraction of each pixel within its bin in the reference band (extensive quantities)
        # share weights: the intrinsic model of the reference band when the Dataset has one
        # (smooth and positive), else its flux; floored at 1e-3 of the bin mean so no pixel
        # of a bin gets zero mass
        if S.MODEL in ds:
            ref_pix = np.nan_to_num(ds[S.MODEL].sel({S.BAND: reference_band}).values * scale).ravel()
        else:
            ref_pix = np.where(valid[iref], img[iref], 0.0).ravel()
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
        src = pos
    else:
        src = np.full(npix, -1)
        src[pix_index] = np.arange(pix_index.size)
        frac = np.ones(npix)

    def paint(arr, fill=np.nan):
        arr = np.asarray(arr)
        outp = np.full((npix,) + arr.shape[1:], fill, dtype=np.result_type(arr.dtype, type(fill)))
        has = src >= 0
        outp[has] = arr[src[has]]
        return outp

    shift = np.log10(np.where(frac > 0, frac, np.nan))
    data_vars = {}
    for key in QUANTITIES:
        if key == "redshift" and redshift_sigma is None:
            continue
        m = paint(res[key])
        if binned and key in _EXTENSIVE:
            m = m + shift[:, None]
        data_vars[_OUT_NAMES[key]] = S.variable(_OUT_NAMES[key], m.reshape(ny, nx, 3), ds)
    area = pixel_area_kpc2(float(ds.attrs[S.PIXEL_SCALE]), redshift)
    smd = 10.0 ** data_vars[S.LOG_STELLAR_MASS][1] / area
    sfd = 10.0 ** data_vars[S.LOG_SFR100][1] / area
    data_vars[S.STELLAR_MASS_DENSITY] = S.variable(S.STELLAR_MASS_DENSITY, smd, ds, pixel_area_kpc2=area)
    data_vars[S.SFR_DENSITY] = S.variable(S.SFR_DENSITY, sfd, ds)
    flag = paint(res["flag"].astype(np.int16), fill=np.int16(FLAG_NOT_FITTED)).reshape(ny, nx)
    data_vars[S.SEDFIT_FLAG] = S.variable(S.SEDFIT_FLAG, flag, ds)
    data_vars[S.CHI2] = S.variable(S.CHI2, paint(res["chi2"]).reshape(ny, nx), ds)
    data_vars[S.N_BANDS] = S.variable(S.N_BANDS, paint(res["n_bands"], fill=0).reshape(ny, nx), ds)
    data_vars[S.ESS] = S.variable(S.ESS, paint(res["ess"]).reshape(ny, nx), ds)
    data_vars[S.INFORMATION_GAIN] = S.variable(S.INFORMATION_GAIN, paint(res["information_gain"]).reshape(ny, nx, -1), ds)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(valid[iref], img[iref] / err[iref], np.nan)
    data_vars[S.SNR] = S.variable(S.SNR, np.where(reg, snr, np.nan), ds, band=reference_band)
    model = paint(res["model_flux"])
    if binned:
        model = model * frac[:, None]
    model = model.T.reshape(len(bands), ny, nx)
    model_full = np.full((len(all_bands), ny, nx), np.nan)
    resid_full = np.full((len(all_bands), ny, nx), np.nan)
    from .simulate import emulator_fraction

    fit_frac = emulator_fraction(emu, bands) if emulator_sigma else np.zeros(len(bands))
    for j, b in enumerate(bands):
        k = all_bands.index(b)
        model_full[k] = model[j] / scale
        ef = effective_error(img[j], err[j], error_floor, fit_frac[j])
        with np.errstate(divide="ignore", invalid="ignore"):
            resid_full[k] = np.where(valid[j] & reg, (img[j] - model[j]) / ef, np.nan)
    data_vars[S.MODEL_IMAGE] = S.variable(S.MODEL_IMAGE, model_full, ds)
    data_vars[S.SED_RESIDUAL] = S.variable(S.SED_RESIDUAL, resid_full, ds)
    coords = {S.QUANTILE: (S.QUANTILE, np.array([0.16, 0.5, 0.84]), {"units": "1", "long_name": "posterior quantile"}),
              S.INFO_QUANTITY: (S.INFO_QUANTITY, np.array(INFO_QUANTITIES), {"units": "1", "long_name": "quantity of the information gain"})}
    if keep_samples:
        smp = paint(res["samples"]).reshape(ny, nx, keep_samples, -1)
        data_vars[S.POSTERIOR_SAMPLES] = S.variable(S.POSTERIOR_SAMPLES, smp, ds)
        coords[S.SAMPLE] = (S.SAMPLE, np.arange(keep_samples), {"units": "1", "long_name": "posterior draw"})
        coords[S.PARAM] = (S.PARAM, np.array(emu.param_names), {"units": "1", "long_name": "emulator parameter"})
    out = ds.copy()
    for name in list(data_vars):
        if name in out:
            out = out.drop_vars(name)
    out = out.assign_coords({k: v for k, v in coords.items() if k not in out.coords or k == S.QUANTILE})
    out = out.assign(data_vars)

    # -- pixel sum vs integrated ------------------------------------------------------
    fitted = np.isfinite(res["mass_draws"]).all(axis=1)
    attrs = {}
    if fitted.any():
        md, sd = res["mass_draws"][fitted], res["sfr_draws"][fitted]
        mass_sum = np.log10(np.sum(10.0 ** md, axis=0))
        sfr_sum = np.log10(np.sum(10.0 ** sd, axis=0))
        attrs["sedfit_log_mass_pixel_sum"] = np.percentile(mass_sum, [16, 50, 84])
        attrs["sedfit_log_sfr100_pixel_sum"] = np.percentile(sfr_sum, [16, 50, 84])
    attrs["sedfit_n_fitted"] = int(fitted.sum())
    rchi = res["chi2"] / np.maximum(res["n_bands"] - 1, 1)
    attrs["sedfit_median_reduced_chi2"] = float(np.nanmedian(rchi)) if np.isfinite(rchi).any() else np.nan
    attrs["sedfit_median_ess"] = float(np.nanmedian(res["ess"])) if np.isfinite(res["ess"]).any() else np.nan
    attrs["sedfit_seconds"] = float(res["seconds"])
    if integrated and fitted.any():
        tot_f = np.where(ok, flux, 0.0).sum(axis=0)
        tot_e = np.sqrt((np.where(ok, error, 0.0) ** 2).sum(axis=0))
        good = ok.any(axis=0)
        integ = fit_photometry(tot_f[None, :], tot_e[None, :], bands, redshift, valid=good[None, :],
                               method="importance" if method != "nested" else "nested", emulator=emu,
                               network=network, n_draws=max(1024, n_draws), max_rounds=12, error_floor=error_floor,
                               emulator_sigma=emulator_sigma, mass_range=(mass_range[0], mass_range[1] + 3),
                               redshift_sigma=redshift_sigma, seed=seed, progress=False)
        attrs["sedfit_log_mass_integrated"] = integ["log_stellar_mass"][0]
        attrs["sedfit_log_sfr100_integrated"] = integ["log_sfr100"][0]
        attrs["sedfit_integrated_ess"] = float(integ["ess"][0])
        if "sedfit_log_mass_pixel_sum" in attrs:
            attrs["sedfit_mass_difference_dex"] = float(attrs["sedfit_log_mass_pixel_sum"][1]
                                                        - integ["log_stellar_mass"][0, 1])
            attrs["sedfit_sfr_difference_dex"] = float(attrs["sedfit_log_sfr100_pixel_sum"][1]
                                                       - integ["log_sfr100"][0, 1])
    out.attrs.update({k: (np.asarray(v, dtype=float) if np.ndim(v) else v) for k, v in attrs.items()})
    params = dict(redshift=redshift, redshift_sigma=redshift_sigma, method=method,
                  emulator=getattr(emu, "name", str(emulator)), network=str(network) if network is not None else "default",
                  bands=bands, region="<array>" if not (region is None or isinstance(region, str)) else region,
                  reference_band=reference_band, error_floor=error_floor, emulator_sigma=emulator_sigma,
                  mass_range=list(mass_range), n_draws=n_draws, keep_samples=keep_samples, binned=bool(binned),
                  seed=seed)
    return S.append_history(out, "sedfit", params)
