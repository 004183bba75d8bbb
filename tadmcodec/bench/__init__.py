"""The rate-distortion benchmark behind `tadm bench` and `tadm demo`.

It measures what the product promises (better pictures than JPEG at a fraction
of the bits) against every classic codec people use at these rates, so claims
in the README come from numbers anyone can regenerate:

- `settings`: settings (one R-D point) and the sweep grids;
- `classic`: JPEG / WebP / AVIF / JPEG XL, each with a 1x/2x/4x pre-shrink;
- `runner`: runs every image x setting with a resumable cache and --jobs;
- `bdrate`: Bjøntegaard delta rate (piecewise cubic);
- `report` / `plot`: CSV, CompressAI-style JSON, BD-rate tables, summary, R-D plot;
- `demo`: the no-input demo on scikit-image's bundled photos.

No module here imports torch at import time; the metrics and models do when they run.
"""
