"""Point-spread functions: analytic models, preparation of PSF images, measurements."""
