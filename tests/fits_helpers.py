"""Small FITS writers shared by the tests (not a test module)."""

from astropy.io import fits


def write_stamp(path, sci, err, seg=None, bunit="uJy", header=None, with_err=True):
    """A stamp file: ``SCI`` (and ``ERR``, optional ``SEG``) extensions sharing one header."""
    hdr = fits.Header() if header is None else header.copy()
    if bunit is not None:
        hdr["BUNIT"] = bunit
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci, header=hdr, name="SCI")]
    if with_err:
        hdus.append(fits.ImageHDU(err, header=hdr, name="ERR"))
    if seg is not None:
        hdus.append(fits.ImageHDU(seg, header=hdr, name="SEG"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
