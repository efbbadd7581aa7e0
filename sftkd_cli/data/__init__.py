"""Data: raw volumes -> prepared dataset (one h5 per volume + manifest.json) -> torch slices.

- `sftkd_cli.data.sources`: one module per folder layout (demo, acdc, mrbrains, nifti, fastmri).
- `sftkd_cli.data.prepare`: `prepare_dataset(source, out, PrepareOptions(...))`, the library behind
  `sftkd prepare-data`: validation, crop/pad, fixed masks, h5 writing, atomic output, manifest.
- `sftkd_cli.data.complex_prepare`: the writer for complex sources (fastMRI raw k-space: the full
  k-space and magnitude target per volume, scaled by the volume's max; masks applied when read).
- `sftkd_cli.data.dataset`: `SliceDataset`, `load_manifest`, `dataset_fingerprint`, `load_volume`;
  `sftkd_cli.data.complex_slices` makes the items of complex datasets and per-sample masks.
- `sftkd_cli.data.volumes`: NIfTI reading with one-line errors and the small array helpers.
- `sftkd_cli.data.catalog`: what each source is (options, defaults, help); `prepare-data` and plans read it.
- `sftkd_cli.data.format`, `options`, `output`, `partial`: the names readers share with the writer,
  `PrepareOptions`, the output folder's checks and atomic install, and the partial folder an
  interrupted run is resumed from.

Importing this package is cheap; torch is only imported by `sftkd_cli.data.dataset`.
"""
