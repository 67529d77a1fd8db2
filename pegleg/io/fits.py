"""Reading multi-band FITS stamps or mosaic cutouts into a stamp Dataset.

:func:`open_stamps` is the FITS entry point of pegleg.  It reads per-band science
(``SCI``), uncertainty (``ERR``) and optional segmentation (``SEG``) images, checks
that every band is on one pixel grid, converts surface brightness (``MJy/sr``) to
flux per pixel, prepares the PSFs (:func:`pegleg.psf.tools.prepare_psf`) and builds
the Dataset with :func:`pegleg.schema.from_arrays`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import schema
from .. import filters as _filters
from ..exceptions import FileFormatError, PeglegWarning, PSFError, SchemaError
from ..psf.tools import prepare_psf

__all__ = ["open_stamps"]

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
#: Relative tolerance on pixel scales of different bands.
SCALE_TOLERANCE = 1e-4
#: Bands must share a grid to within this many pixels.
GRID_TOLERANCE = 0.05
#: Largest cutout side (pixels): beyond it ``size`` is a mistake (e.g. arcsec given as pixels).
MAX_CUTOUT = 8192
_PSF_SCALE_CARDS = ("PIXELSCL", "PIXSCALE")
_UNIT_ALIASES = {"microjy": "uJy", "microjansky": "uJy", "ujy": "uJy", "njy": "nJy", "nanojy": "nJy",
                 "nanojansky": "nJy", "jy": "Jy", "jansky": "Jy", "mjy/sr": "MJy/sr", "mjy sr-1": "MJy/sr"}


# ---------------------------------------------------------------------------
# low-level FITS reading
# ---------------------------------------------------------------------------
class _HDURef:
    """A reference to one image HDU: ``path`` and ``ext`` (name, index or None = first image)."""

    def __init__(self, path: Any, ext: Any = None, required: bool = True):
        self.path = Path(os.fspath(path)).expanduser()
        self.ext = ext
        self.required = required

    def __repr__(self) -> str:
        return f"{self.path}[{self.ext}]" if self.ext is not None else str(self.path)


def _file_label(path: Path, ext: Any = None) -> str:
    return f"{path}" if ext is None else f"{path} (extension {ext!r})"


def _open_fits(path: Path, memmap: bool = False):
    """Open a FITS file; any problem -> FileFormatError naming it.

    By default every HDU is read into memory now (and truncation detected).  With
    ``memmap`` (mosaic cutouts) uncompressed image data stay memory-mapped: only the
    pixels a cutout touches are read, so memory does not grow with the mosaic.  A
    truncated file is still refused at once (its expected size exceeds the file's).
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    if not path.exists():
        raise FileFormatError(f"{path}: file not found")
    if path.is_dir():
        raise FileFormatError(f"{path}: is a folder, expected a FITS file")
    hdul = None
    # our own file handle, so that it is closed even when astropy fails half-way (astropy
    # left its own handle open when a memory-mapped open of a truncated file failed)
    fh = open(path, "rb")
    try:
        with warnings.catch_warnings():
            # astropy reports truncated or corrupt files as warnings; treat them as errors
            warnings.simplefilter("error", AstropyUserWarning)
            hdul = fits.open(fh, memmap=bool(memmap), lazy_load_hdus=False)
            for hdu in hdul:
                # memmap: maps the data (a truncated file fails here) and reads nothing;
                # otherwise reads everything into memory now (and detects truncation)
                _ = hdu.data
    except Exception as exc:  # OSError, VerifyError, warnings-as-errors, ...
        if hdul is not None:
            hdul.close()
        fh.close()
        raise FileFormatError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    if not memmap:
        fh.close()                      # everything is in memory (memory-mapped: hdul.close() closes it)
    return hdul


class _FileCache:
    """Open FITS files of one ``open_stamps`` call, each opened once (memory-mapped for cutouts)."""

    def __init__(self, memmap: bool = False):
        self.memmap = memmap
        self._files: dict[str, Any] = {}

    def get(self, path: Path):
        key = str(path.resolve()) if path.exists() else str(path)
        if key not in self._files:
            self._files[key] = _open_fits(path, memmap=self.memmap)
        return self._files[key]

    def close(self) -> None:
        for hdul in self._files.values():
            hdul.close()
        self._files.clear()


def _image_hdu(hdul, path: Path, ext: Any):
    """Select an image HDU: by name/index, or the first HDU holding a 2-D image."""
    if ext is None:
        for hdu in hdul:
            if hdu.data is not None and getattr(hdu, "is_image", False) and hdu.data.ndim >= 2:
                return hdu
        raise FileFormatError(f"{path}: contains no image data")
    try:
        hdu = hdul[ext]
    except (KeyError, IndexError):
        names = [h.name for h in hdul]
        raise FileFormatError(f"{path}: has no extension {ext!r} (extensions: {names})") from None
    if hdu.data is None or not getattr(hdu, "is_image", False):
        raise FileFormatError(f"{path}: extension {ext!r} holds no image data")
    return hdu


def _read_image(ref: _HDURef, cache: _FileCache) -> tuple[np.ndarray, Any]:
    """(data, header) of an image HDU; 2-D (leading length-1 axes are dropped)."""
    hdul = cache.get(ref.path)
    hdu = _image_hdu(hdul, ref.path, ref.ext)
    data = hdu.data
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise FileFormatError(f"{_file_label(ref.path, ref.ext)}: expected a 2-D image, got shape {data.shape}")
    return data, hdu.header


def _has_ext(ref: _HDURef, cache: _FileCache, name: str) -> bool:
    return any(h.name == name.upper() for h in cache.get(ref.path))


def _wcs(header: Any, label: str):
    """Celestial 2-D WCS of ``header`` or None (silently fixes non-standard cards)."""
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(header, naxis=2)
    except Exception as exc:
        raise FileFormatError(f"{label}: unreadable WCS ({exc})") from None
    if not w.has_celestial or w.naxis != 2:
        return None
    return w


_WCS_CARD = re.compile(r"^(WCSAXES|CRPIX\d|CRVAL\d|CDELT\d|CUNIT\d|CTYPE\d|CROTA\d|PC\d_\d|CD\d_\d|"
                       r"PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|EQUINOX|WCSNAME|"
                       r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+)$")


def _wcs_text(w) -> str:
    """Header text of the celestial WCS only (no time/observatory cards, which make astropy
    emit FITSFixedWarning every time the text is parsed again)."""
    from astropy.io import fits
    from astropy.wcs import FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        hdr = w.to_header(relax=True)
    clean = fits.Header([card for card in hdr.cards if _WCS_CARD.match(card.keyword)])
    if w.sip is not None and "-SIP" not in str(clean.get("CTYPE1", "")):
        clean["CTYPE1"] = str(clean["CTYPE1"]) + "-SIP"
        clean["CTYPE2"] = str(clean["CTYPE2"]) + "-SIP"
    return schema.wcs_to_text(clean)


def _pixel_scale(w, label: str) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    sc = proj_plane_pixel_scales(w) * 3600.0  # CUNIT deg -> arcsec
    if abs(sc[0] / sc[1] - 1) > SCALE_TOLERANCE:
        raise SchemaError(f"{label}: pixels are not square ({sc[0]:.6g} x {sc[1]:.6g} arcsec); "
                          "resample to square pixels first")
    return float(np.mean(sc))


# ---------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------
def _parse_unit(text: str, label: str):
    """(kind, unit) with kind 'flux' (per pixel) or 'sb' (per steradian)."""
    import astropy.units as u

    raw = str(text).strip()
    candidates = [raw, _UNIT_ALIASES.get(raw.lower(), raw)]
    unit = None
    for c in candidates:
        for fmt in (None, "fits"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    unit = u.Unit(c, format=fmt)
                break
            except (ValueError, TypeError):
                continue
        if unit is not None:
            break
    if unit is not None:
        if unit.is_equivalent(u.Jy):
            return "flux", unit
        if (unit * u.pix).is_equivalent(u.Jy):  # "uJy / pix": flux per pixel
            return "flux", unit * u.pix
        if unit.is_equivalent(u.Jy / u.sr):
            return "sb", unit
    raise SchemaError(f"{label}: unknown or unsupported BUNIT {raw!r}; expected a flux density per pixel "
                      "(e.g. 'uJy', 'nJy') or a surface brightness ('MJy/sr'); pass units= for files "
                      "without BUNIT")


def _unit_string(unit) -> str:
    s = unit.to_string()
    return s.replace(" ", "")


# ---------------------------------------------------------------------------
# resolving the source
# ---------------------------------------------------------------------------
def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for suf in sorted(_FITS_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)]
    return None


def _folder_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.exists():
        raise FileFormatError(f"{folder}: {what} folder not found")
    if not folder.is_dir():
        raise FileFormatError(f"{folder}: expected a folder of <BAND>.fits files ({what})")
    out = {}
    for p in sorted(folder.iterdir()):
        stem = _strip_suffix(p.name)
        if stem and p.is_file() and not p.name.startswith("."):
            out[stem] = p
    if not out:
        raise FileFormatError(f"{folder}: no FITS files (<BAND>.fits) found ({what})")
    return out


def _ref(value: Any, default_ext: Any, role: str, band: str, required: bool = True) -> _HDURef:
    if isinstance(value, _HDURef):
        return value
    if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, os.PathLike))
            and (isinstance(value[1], (int, np.integer))
                 or (isinstance(value[1], str) and _strip_suffix(value[1]) is None))):
        return _HDURef(value[0], value[1], required)
    if isinstance(value, (str, os.PathLike)):
        return _HDURef(value, default_ext, required)
    raise SchemaError(f"source[{band!r}][{role!r}]: expected a file path or (path, extension), got {value!r}")


def _band_refs(source: Any) -> tuple[dict[str, dict[str, _HDURef | None]], Path | None]:
    """band -> {"sci", "err", "seg"} HDU references, and the folder (if any)."""
    folder = None
    if isinstance(source, (str, os.PathLike)):
        folder = Path(os.fspath(source)).expanduser()
        files = _folder_files(folder, "image")
        spec: Mapping[str, Any] = files
    elif isinstance(source, Mapping):
        spec = source
        if not spec:
            raise SchemaError("source: empty mapping; expected band -> FITS file")
    else:
        raise SchemaError(f"source: expected a folder, or a mapping band -> FITS file (or band -> "
                          f"dict(sci=..., err=..., seg=...)), got {type(source).__name__}")
    refs: dict[str, dict[str, _HDURef | None]] = {}
    for band, value in spec.items():
        band = str(band).strip()
        if isinstance(value, Mapping):
            unknown = set(map(str.lower, value)) - {"sci", "err", "seg"}
            if unknown:
                raise SchemaError(f"source[{band!r}]: unknown key(s) {sorted(unknown)}; expected sci, err, seg")
            low = {str(k).lower(): v for k, v in value.items()}
            if "sci" not in low or "err" not in low:
                raise SchemaError(f"source[{band!r}]: needs both 'sci' and 'err' entries")
            refs[band] = {
                "sci": _ref(low["sci"], "?SCI", "sci", band),
                "err": _ref(low["err"], "?ERR", "err", band),
                "seg": _ref(low["seg"], "?SEG", "seg", band) if low.get("seg") is not None else None,
            }
        elif isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(
                isinstance(v, (str, os.PathLike)) and _strip_suffix(Path(os.fspath(v)).name) for v in value):
            refs[band] = {"sci": _HDURef(value[0], "?SCI"), "err": _HDURef(value[1], "?ERR"),
                          "seg": _HDURef(value[2], "?SEG") if len(value) == 3 else None}
        elif isinstance(value, (str, os.PathLike)):
            refs[band] = {"sci": _HDURef(value, "SCI"), "err": _HDURef(value, "ERR"),
                          "seg": _HDURef(value, "SEG", required=False)}
        else:
            raise SchemaError(f"source[{band!r}]: expected a FITS path, (sci, err[, seg]) paths or "
                              f"dict(sci=..., err=..., seg=...), got {type(value).__name__}")
    return refs, folder


def _resolve_ext(ref: _HDURef, cache: _FileCache) -> _HDURef:
    """'?NAME' means: extension NAME if the file has one, else the first image HDU."""
    if isinstance(ref.ext, str) and ref.ext.startswith("?"):
        name = ref.ext[1:]
        ext = name if _has_ext(ref, cache, name) else None
        return _HDURef(ref.path, ext, ref.required)
    return ref


def _select_bands(found: Sequence[str], bands: Any, folder: Path | None) -> list[str]:
    lookup = {b.upper(): b for b in found}
    if bands is None:
        try:
            return sorted(found, key=lambda b: (_filters.pivot_wavelength(b), b))
        except SchemaError as exc:
            unknown = [b for b in found if _filters.instrument(b) is None]
            where = f" in {folder}" if folder else ""
            raise SchemaError(f"cannot order bands{where}: unknown filter name(s) {unknown} "
                              f"({exc}); pass bands= explicitly") from None
    if isinstance(bands, str):
        bands = [bands]
    try:
        bands = list(bands)
    except TypeError:
        raise SchemaError(f"bands: expected a sequence of band names, got {bands!r}") from None
    out = []
    for b in bands:
        key = str(b).strip().upper()
        if key not in lookup:
            where = f"folder {folder}" if folder else "source"
            raise FileFormatError(f"band {b!r}: no FITS file for it in {where}; available bands: {sorted(found)}")
        out.append(lookup[key])
    if not out:
        raise SchemaError("bands: empty selection")
    dup = sorted({b for b in out if out.count(b) > 1})
    if dup:
        raise SchemaError(f"bands: duplicated band(s) {dup}")
    return out


# ---------------------------------------------------------------------------
# PSFs
# ---------------------------------------------------------------------------
def _psf_sources(psf: Any) -> tuple[dict[str, Any], str]:
    """name -> (path or array), and a text description of the PSF source."""
    if psf is None:
        return {}, "None"
    if isinstance(psf, (str, os.PathLike)):
        p = Path(os.fspath(psf)).expanduser()
        if p.is_file():
            return {"*": p}, str(p)
        return dict(_folder_files(p, "PSF")), str(p)
    if isinstance(psf, Mapping):
        out = {}
        for k, v in psf.items():
            out[str(k).strip()] = Path(os.fspath(v)).expanduser() if isinstance(v, (str, os.PathLike)) else v
        desc = {k: (str(v) if isinstance(v, Path) else f"<array {np.shape(v)}>") for k, v in out.items()}
        return out, json.dumps(desc)
    if isinstance(psf, (np.ndarray, xr.DataArray)) and np.ndim(psf) == 2:
        return {"*": np.asarray(psf)}, f"<array {np.shape(psf)}>"
    raise PSFError(f"psf: expected a folder of <BAND>.fits, a FITS file, a 2-D array, or a mapping band -> "
                   f"path/array (key '*' for every band), got {type(psf).__name__}")


def _lookup_psf(sources: dict[str, Any], band: str) -> tuple[str, Any] | None:
    upper = {k.upper(): k for k in sources}
    key = upper.get(band.upper())
    if key is not None:
        return key, sources[key]
    if "*" in sources:
        return "*", sources["*"]
    return None


def _load_psf(value: Any, band: str, image_scale: float, size: Any) -> np.ndarray:
    if isinstance(value, Path):
        hdul = _open_fits(value)
        try:
            hdu = _image_hdu(hdul, value, None)
            data = hdu.data
            scale = None
            for card in _PSF_SCALE_CARDS:
                for h in (hdu.header, hdul[0].header):
                    if card in h:
                        scale = h[card]
                        break
                if scale is not None:
                    break
        finally:
            hdul.close()
        name = f"{band} ({value})"
        if scale is not None:
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                raise PSFError(f"psf file {value}: header PIXELSCL={scale!r} is not a number") from None
        return prepare_psf(data, from_scale=scale if scale is not None else image_scale,
                           to_scale=image_scale, size=size, name=name)
    if isinstance(value, xr.DataArray):
        value = value.values
    return prepare_psf(value, from_scale=image_scale, to_scale=image_scale, size=size, name=band)


# ---------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------
def open_stamps(source: Any, *, bands: Sequence[str] | None = None, psf: Any = None,
                center: Any = None, size: Any = None, matched_to: str | None = None,
                missing_psf: str = "raise", redshift: float | None = None,
                source_id: str | None = None, units: str | None = None,
                segmentation: bool | str | Any = True, pixel_scale: float | None = None,
                psf_size: Any = None) -> xr.Dataset:
    """Read multi-band FITS stamps (or cut them from mosaics) into a stamp Dataset.

    Parameters
    ----------
    source : str, path or mapping
        - a folder of ``<BAND>.fits`` files, each with extensions ``SCI`` (flux),
          ``ERR`` (1-sigma) and optionally ``SEG`` (segmentation);
        - a mapping ``band -> path`` of such files;
        - a mapping ``band -> dict(sci=..., err=..., seg=...)`` (or ``(sci, err[, seg])``)
          of separate files; each entry is a path (the extension named ``SCI``/``ERR``/
          ``SEG`` if present, else the first HDU with an image) or ``(path, extension)``.

        Mosaics are given the same way together with ``center`` and ``size``.
    bands : sequence of str, optional
        Bands to read, in this order (case-insensitive match to the file names).
        Default: every band found, sorted by pivot wavelength.
    psf : folder, path, array or mapping, optional
        A folder of ``<BAND>.fits`` PSF images, one FITS file or 2-D array for every
        band, or a mapping ``band -> path or array``; the key ``"*"`` gives the PSF of
        every band not listed.  A PSF file's image is its primary (or first image) HDU;
        header card ``PIXELSCL`` (arcsec/pixel) gives its pixel scale, otherwise (and
        for arrays) the image pixel scale is assumed.  Every PSF is passed through
        :func:`pegleg.psf.tools.prepare_psf` (resampled flux-conservingly to the image
        scale, recentred, odd-sized, sum 1).
    center : astropy.coordinates.SkyCoord or (x, y) pixel position, optional
        Cut out a stamp around this position (``astropy.nddata.Cutout2D``, mode
        ``"partial"``: pixels outside a mosaic become NaN and are masked).
    size : int, (ny, nx) or astropy Quantity angle, optional
        Cutout size in pixels or as an angle; required with ``center``.
    matched_to : str, optional
        The images were already PSF-matched to this band by the data provider: its
        PSF is used for every band (no other band needs a PSF) and
        ``attrs['resolution']`` is ``"matched:<band>"``.
    missing_psf : {"raise", "drop"}
        A band without PSF raises :class:`~pegleg.PSFError` (listing the bands without
        PSF and the PSFs available) or is dropped with a :class:`~pegleg.PeglegWarning`.
    redshift, source_id : optional
        Stored in the attributes.  Default: read ``id`` and ``redshift`` (or
        ``redshift_phot``) from a ``source.json`` in the source folder, if present.
    units : str, optional
        Unit of files without a ``BUNIT`` header card (e.g. ``"uJy"``, ``"MJy/sr"``).
    segmentation : bool, str or array, optional
        ``True`` (default): use the ``SEG`` extension of the ``matched_to`` band if it
        has labels, else of the longest-wavelength band whose ``SEG`` has labels.
        A band name selects that band's ``SEG``; a (y, x) integer array is used as
        given; ``False`` reads none.  The galaxy's own label is the value at the centre
        pixel (or the label nearest to it if that is 0); pixels with any *other*
        positive label (neighbours) are masked in every band.
    pixel_scale : float, optional
        Pixel scale (arcsec/pixel) for files without a celestial WCS.
    psf_size : int, optional
        Odd size to which every PSF is cropped/padded (default: the prepared size).

    Returns
    -------
    xarray.Dataset
        A valid stamp Dataset (:mod:`pegleg.schema`) with ``segmentation`` when
        available, ``attrs['wcs']`` from the first band's SCI header (or the cutout
        WCS), and history steps ``from_arrays`` and ``open_stamps``.

    Notes
    -----
    Units: ``BUNIT`` of the SCI header decides.  A flux density per pixel (``uJy``,
    ``nJy``, ``Jy``, ...; also ``uJy/pix``) is kept as is: ``image`` values are
    *identical* to the FITS SCI data (converted to float64 only).  All per-pixel bands
    must share one unit.  Surface brightness (``MJy/sr``) is converted to flux per
    pixel (in the per-pixel unit of the other bands, else ``uJy``) with the pixel area
    from the WCS (``astropy.wcs.utils.proj_plane_pixel_area``), for ``SCI`` and ``ERR``.

    Masking: pixels with non-finite SCI or ERR, or ERR <= 0 ("no coverage"), are
    masked silently in their band (their values are kept, not replaced); neighbours
    in the segmentation map are masked in every band.  The per-band number of
    no-coverage pixels is recorded in the ``open_stamps`` history step.

    Raises
    ------
    FileFormatError
        Missing file or folder, unreadable/truncated FITS, missing SCI/ERR extension
        (the message names the file and extension).
    SchemaError
        Unknown ``BUNIT``, bands on different pixel scales, shapes or grids, unknown
        band names (without ``bands=``).
    PSFError
        Missing PSFs (with ``missing_psf="raise"``), unusable PSF images.
    """
    if not isinstance(missing_psf, str) or missing_psf not in ("raise", "drop"):
        raise SchemaError(f"missing_psf: expected 'raise' or 'drop', got {missing_psf!r}")
    if pixel_scale is not None:
        pixel_scale = schema.check_positive(pixel_scale, "pixel_scale", what="pixel scale (arcsec/pixel)")
    if (center is None) != (size is None):
        raise SchemaError("center and size: give both (a cutout) or neither")

    refs, folder = _band_refs(source)
    band_list = _select_bands(list(refs), bands, folder)
    # mosaics are memory-mapped: a cutout reads only its own pixels
    cache = _FileCache(memmap=center is not None)
    try:
        return _open(refs, folder, band_list, cache, source=source, psf=psf, center=center, size=size,
                     matched_to=matched_to, missing_psf=missing_psf, redshift=redshift,
                     source_id=source_id, units=units, segmentation=segmentation,
                     pixel_scale=pixel_scale, psf_size=psf_size)
    finally:
        cache.close()


def _open(refs, folder, band_list, cache, *, source, psf, center, size, matched_to, missing_psf,
          redshift, source_id, units, segmentation, pixel_scale, psf_size) -> xr.Dataset:
    import astropy.units as u

    # ---------------- read SCI / ERR / SEG ----------------
    sci, err, seg_maps, wcss, scales, labels, unit_info = {}, {}, {}, {}, {}, {}, {}
    cut_centre: dict[str, tuple[int, int]] = {}
    for b in band_list:
        r_sci = _resolve_ext(refs[b]["sci"], cache)
        r_err = _resolve_ext(refs[b]["err"], cache)
        s_data, s_hdr = _read_image(r_sci, cache)
        e_data, e_hdr = _read_image(r_err, cache)
        label = _file_label(r_sci.path, r_sci.ext)
        labels[b] = label
        seg_data = None
        r_seg = refs[b]["seg"]
        if r_seg is not None:
            r_seg = _resolve_ext(r_seg, cache)
            if r_seg.required or _has_ext(r_seg, cache, str(r_seg.ext)):
                seg_data, _ = _read_image(r_seg, cache)
        if e_data.shape != s_data.shape:
            raise SchemaError(f"band {b!r}: ERR shape {e_data.shape} differs from SCI shape {s_data.shape} ({label})")
        if seg_data is not None and seg_data.shape != s_data.shape:
            raise SchemaError(f"band {b!r}: SEG shape {seg_data.shape} differs from SCI shape {s_data.shape} ({label})")
        w = _wcs(s_hdr, label)

        if center is not None:
            s_data, e_data, seg_data, w, pos = _cutout(s_data, e_data, seg_data, w, center, size, b, label)
            cut_centre[b] = pos

        # units
        bunit = s_hdr.get("BUNIT")
        if bunit is None or not str(bunit).strip():
            if units is None:
                raise SchemaError(f"{label}: no BUNIT header card; pass units= (e.g. 'uJy' or 'MJy/sr')")
            bunit = units
        kind, unit = _parse_unit(bunit, label)
        e_bunit = e_hdr.get("BUNIT")
        if e_bunit is not None and str(e_bunit).strip():
            e_kind, e_unit = _parse_unit(e_bunit, _file_label(r_err.path, r_err.ext))
            if e_kind != kind or not u.Quantity(1, e_unit).to(unit).value == 1.0:
                raise SchemaError(f"band {b!r}: ERR unit {e_bunit!r} differs from SCI unit {bunit!r} ({label})")
        unit_info[b] = (kind, unit, str(bunit).strip())

        if w is not None:
            scales[b] = _pixel_scale(w, label)
        sci[b], err[b], seg_maps[b], wcss[b] = s_data, e_data, seg_data, w

    # ---------------- one grid ----------------
    b0 = band_list[0]
    shapes = {b: sci[b].shape for b in band_list}
    if len(set(shapes.values())) > 1:
        raise SchemaError(f"bands have different image shapes {shapes}; all bands must be on one pixel grid")
    have_wcs = [b for b in band_list if wcss[b] is not None]
    if have_wcs and len(have_wcs) != len(band_list):
        missing = [b for b in band_list if wcss[b] is None]
        raise SchemaError(f"band(s) {missing} have no celestial WCS while {have_wcs} do; "
                          "cannot check that all bands are on one grid")
    if have_wcs:
        ref_scale = scales[b0]
        bad = {b: round(s, 6) for b, s in scales.items() if abs(s / ref_scale - 1) > SCALE_TOLERANCE}
        if bad:
            raise SchemaError(f"bands have different pixel scales (arcsec/pixel): {b0!r}: {ref_scale:.6g} vs "
                              f"{bad}; resample them to one grid first")
        if pixel_scale is not None and abs(float(pixel_scale) / ref_scale - 1) > SCALE_TOLERANCE:
            raise SchemaError(f"pixel_scale={pixel_scale} disagrees with the WCS pixel scale {ref_scale:.6g} "
                              f"of {labels[b0]}")
        ps = float(f"{ref_scale:.12g}")  # WCS arithmetic noise (0.02999999999999973)
        ny, nx = shapes[b0]
        corners = np.array([[0.0, 0.0], [nx - 1.0, ny - 1.0]])
        w0 = wcss[b0]
        off_grid = {}
        for b in band_list[1:]:
            sky = wcss[b].pixel_to_world_values(corners[:, 0], corners[:, 1])
            px, py = w0.world_to_pixel_values(*sky)
            d = float(np.max(np.hypot(px - corners[:, 0], py - corners[:, 1])))
            if not d <= GRID_TOLERANCE:
                off_grid[b] = round(d, 3)
        if off_grid:
            raise SchemaError(f"bands {sorted(off_grid)} are not on the pixel grid of {b0!r} (offsets in pixels: "
                              f"{off_grid}; tolerance {GRID_TOLERANCE}); reproject them onto one grid first")
    else:
        if pixel_scale is None:
            raise SchemaError(f"{labels[b0]}: no celestial WCS to read the pixel scale from; pass pixel_scale=")
        ps = float(pixel_scale)

    # ---------------- units -> one flux unit ----------------
    flux_bands = [b for b in band_list if unit_info[b][0] == "flux"]
    distinct = {_unit_string(unit_info[b][1]) for b in flux_bands}
    if len(distinct) > 1:
        per_band = {b: unit_info[b][2] for b in flux_bands}
        raise SchemaError(f"bands have different flux units {per_band}; pegleg keeps FITS values "
                          "unchanged, so all per-pixel bands must share one BUNIT")
    if flux_bands:
        target, raw = unit_info[flux_bands[0]][1], unit_info[flux_bands[0]][2]
        # keep the header's own spelling when the schema accepts it ("uJy"), else astropy's
        unit_text = raw if _accepts(raw) else _unit_string(target)
    else:
        target = u.uJy
        unit_text = "uJy"
    conversions = {}
    for b in band_list:
        kind, unit, _ = unit_info[b]
        if kind == "sb":
            if wcss[b] is None:
                raise SchemaError(f"{labels[b]}: BUNIT is a surface brightness ({_unit_string(unit)}) but there is "
                                  "no WCS to compute the pixel area")
            from astropy.wcs.utils import proj_plane_pixel_area

            area_sr = proj_plane_pixel_area(wcss[b]) * (np.pi / 180.0) ** 2
            factor = float((1 * unit * u.sr).to(target).value) * area_sr
            sci[b] = np.asarray(sci[b], dtype=np.float64) * factor
            err[b] = np.asarray(err[b], dtype=np.float64) * factor
            conversions[b] = factor

    # ---------------- PSFs ----------------
    psf_src, psf_desc = _psf_sources(psf)
    prepared: dict[str, np.ndarray] = {}

    def get_psf(band: str) -> np.ndarray | None:
        hit = _lookup_psf(psf_src, band)
        if hit is None:
            return None
        key, value = hit
        if key not in prepared:
            prepared[key] = _load_psf(value, band, ps, psf_size)
        return prepared[key]

    psfs: dict[str, np.ndarray] = {}
    if matched_to is not None:
        matched_to = str(matched_to).strip()
        same = [b for b in band_list if b.upper() == matched_to.upper()]
        if same:
            matched_to = same[0]  # the spelling of the files
        target_psf = get_psf(matched_to)
        if target_psf is None:
            raise PSFError(f"matched_to={matched_to!r}: no PSF for that band; PSFs available: "
                           f"{sorted(psf_src) or 'none (pass psf=)'}")
        psfs = {b: target_psf for b in band_list}
        resolution = f"matched:{matched_to}"
    else:
        resolution = "observed"
        without = [b for b in band_list if _lookup_psf(psf_src, b) is None]
        if without:
            msg = (f"no PSF for band(s) {without}; PSFs available for {sorted(psf_src) or 'none'} "
                   f"(psf={psf_desc})")
            if missing_psf == "raise":
                raise PSFError(msg + "; pass them in psf=, use matched_to=<band> if the images are "
                               "PSF-matched, or missing_psf='drop'")
            if len(without) == len(band_list):
                raise PSFError(msg)
            warnings.warn(msg + "; dropping these bands", PeglegWarning, stacklevel=3)
            band_list = [b for b in band_list if b not in without]
        psfs = {b: get_psf(b) for b in band_list}

    # ---------------- segmentation and mask ----------------
    ny, nx = shapes[b0]
    seg_band = None
    seg = None
    if isinstance(segmentation, str):
        hits = [b for b in sci if b.upper() == segmentation.strip().upper()]
        if not hits or seg_maps[hits[0]] is None:
            raise FileFormatError(f"segmentation={segmentation!r}: no SEG image for that band "
                                  f"(bands with SEG: {[b for b in sci if seg_maps[b] is not None]})")
        seg_band = hits[0]
        seg = np.asarray(seg_maps[seg_band])
    elif segmentation is True:
        with_seg = [b for b in sci if seg_maps[b] is not None]
        labelled = [b for b in with_seg if np.any(np.asarray(seg_maps[b]) > 0)]
        if matched_to is not None and matched_to in labelled:
            seg_band = matched_to
        elif labelled:
            seg_band = max(labelled, key=lambda b: (_safe_wl(b), list(sci).index(b)))
        elif with_seg:
            seg_band = with_seg[0]
        if seg_band is not None:
            seg = np.asarray(seg_maps[seg_band])
    elif segmentation is not False and segmentation is not None:
        seg = np.asarray(segmentation)
        seg_band = "<array>"
        if seg.shape != (ny, nx):
            raise SchemaError(f"segmentation: shape {seg.shape} differs from the image grid {(ny, nx)}")

    if seg is not None:
        seg = schema.check_labels(seg, f"segmentation ({seg_band})").astype(np.int64)  # native copy
    centre = cut_centre.get(b0, (ny // 2, nx // 2))
    own = 0
    neighbours = np.zeros((ny, nx), dtype=bool)
    if seg is not None:
        own = schema.source_label(seg, centre)
        neighbours = (seg > 0) & (seg != own)

    img = np.stack([np.asarray(sci[b]) for b in band_list])
    er = np.stack([np.asarray(err[b]) for b in band_list])
    with np.errstate(invalid="ignore"):
        no_cov = ~np.isfinite(img) | ~np.isfinite(er) | ~(er > 0)
    n_nocov = {b: int(n) for b, n in zip(band_list, no_cov.sum(axis=(1, 2))) if n}
    empty = [b for b, n in zip(band_list, no_cov.sum(axis=(1, 2))) if n == ny * nx]
    if empty:
        warnings.warn(f"band(s) {empty} have no coverage at all (every pixel NaN or ERR <= 0); "
                      "they are fully masked", PeglegWarning, stacklevel=3)
    mask = no_cov | neighbours[None]

    # ---------------- metadata ----------------
    meta = _source_json(folder)
    if source_id is None and meta.get("id") is not None:
        source_id = str(meta["id"])
    if redshift is None:
        for key in ("redshift", "redshift_phot", "z"):
            if meta.get(key) is not None:
                redshift = meta[key]
                break

    wcs0 = wcss[b0]
    ds = schema.from_arrays(img, er, {b: psfs[b] for b in band_list}, band_list, ps, mask=mask,
                            wcs=None if wcs0 is None else _wcs_text(wcs0),
                            redshift=redshift, units=unit_text,
                            segmentation=seg, source_id=source_id, resolution=resolution)
    ds = schema.append_history(ds, "open_stamps", {
        "source": _describe_source(source),
        "bands": band_list,
        "psf": psf_desc,
        "matched_to": matched_to,
        "missing_psf": missing_psf,
        "center": None if center is None else str(center),
        "size": None if size is None else str(size),
        "units": unit_text,
        "surface_brightness_factor": conversions or None,
        "segmentation_band": seg_band,
        "own_label": own,
        "neighbour_pixels": int(neighbours.sum()),
        "no_coverage_pixels": n_nocov,
        "pixel_scale": ps,
    })
    return ds


def _accepts(text: str) -> bool:
    try:
        schema.check_flux_unit(text)
        return True
    except SchemaError:
        return False


def _safe_wl(band: str) -> float:
    try:
        return _filters.pivot_wavelength(band)
    except SchemaError:
        return -1.0


def _cutout(s_data, e_data, seg_data, w, center, size, band, label):
    """Cut SCI/ERR/SEG around ``center``; only the cutout is copied (and converted to
    native float64 / int64), so memory-mapped mosaics are never read in full."""
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D
    from astropy.nddata.utils import NoOverlapError

    if isinstance(center, SkyCoord) and w is None:
        raise SchemaError(f"{label}: center is a sky position but the file has no celestial WCS")
    _check_cutout_size(size, w, band)

    def cut(data):
        if data.dtype.kind not in "fc":  # integer or bool flux maps: the NaN fill needs floats
            data = np.asarray(data, dtype=np.float64)
        return Cutout2D(data, fill_value=np.nan, copy=True, **kw)

    try:
        kw = dict(position=center, size=size, wcs=w, mode="partial")
        cs = cut(s_data)
        ce = cut(e_data)
        cg = None if seg_data is None else Cutout2D(seg_data, fill_value=0, copy=True, **kw)
    except NoOverlapError:
        raise SchemaError(f"band {band!r}: center {center} lies outside the image {label}") from None
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"band {band!r}: cannot cut out center={center}, size={size} from {label} ({exc})") from None
    seg = None
    if cg is not None:
        seg = schema.check_labels(cg.data, f"{label}: SEG").astype(np.int64)
    pos = cs.position_cutout  # (x, y)
    return (np.asarray(cs.data, dtype=np.float64), np.asarray(ce.data, dtype=np.float64), seg, cs.wcs,
            (int(round(pos[1])), int(round(pos[0]))))


def _check_cutout_size(size, w, band) -> None:
    """SchemaError for a non-finite ``size`` or one above :data:`MAX_CUTOUT` pixels (which would
    make Cutout2D allocate without bound); other problems are left to Cutout2D."""
    import astropy.units as u

    try:
        q = u.Quantity(size)
        if q.unit.physical_type == "angle":
            if w is None:
                return
            from astropy.wcs.utils import proj_plane_pixel_scales

            pix = (q / (float(np.mean(proj_plane_pixel_scales(w))) * u.deg)).decompose().value
        elif q.unit in (u.dimensionless_unscaled, u.pixel):
            pix = q.value
        else:
            return
        pix = np.atleast_1d(np.asarray(pix, dtype=float))
    except (TypeError, ValueError, u.UnitsError):
        return
    if pix.size and not np.all(np.isfinite(pix) & (pix <= MAX_CUTOUT)):
        raise SchemaError(f"band {band!r}: size={size!r} is not a finite cutout size of at most {MAX_CUTOUT} pixels")


def _source_json(folder: Path | None) -> dict:
    if folder is None:
        return {}
    p = folder / "source.json"
    if not p.exists():
        return {}
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{p}: not readable JSON ({exc})") from None
    return meta if isinstance(meta, dict) else {}


def _describe_source(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Mapping):
        return {str(k): (str(v) if isinstance(v, (str, os.PathLike)) else
                         {kk: str(vv) for kk, vv in v.items()} if isinstance(v, Mapping) else str(v))
                for k, v in source.items()}
    return str(source)
