"""Data: raw volumes -> prepared dataset (one h5 per volume + manifest.json) -> torch slices.

- `sftkd_cli.data.sources`: one module per folder layout (demo, acdc, mrbrains, nifti).
- `sftkd_cli.data.prepare`: `prepare_dataset(source, out, PrepareOptions(...))`, the library behind
  `sftkd prepare-data`: validation, crop/pad, fixed masks, h5 writing, atomic output, manifest.
- `sftkd_cli.data.dataset`: `SliceDataset`, `load_manifest`, `dataset_fingerprint`, `load_volume`.
- `sftkd_cli.data.volumes`: NIfTI reading with one-line errors and the small array helpers.

Importing this package is cheap; torch is only imported by `sftkd_cli.data.dataset`.
"""
