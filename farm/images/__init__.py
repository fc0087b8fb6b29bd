"""Images as the farm handles them, all pure (bytes in, bytes out, no I/O and no state):

- `raster`: an uncompressed image (`Raster`) and the size of its rows;
- `png`: PNG files read and written (POV-Ray's +FN output, the farm's results, animated PNGs);
- `scanlines`: PNG's row filters and their inverse, and zlib streams inflated under a cap;
- `ppm`, `tga`: POV-Ray's other output formats (+FP, +FT/+FC) read or written as `povfarm render` needs.
- `stamp`: what POV-Ray writes beside the pixels (PNG chunks, PPM comments, Targa's extension area, JPEG's
  comment), for the files `povfarm render` writes.

Every error is a `ValueError` with a sentence; callers turn it into a fault code.
"""
