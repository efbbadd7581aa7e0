"""The names of the files sftkd writes into a run directory and its evaluation folders.

A leaf module (no imports), so that the run folder (`sftkd_cli.runs`), evaluate, export, compare,
the figures and reproduce all read one spelling of each name.
"""

from __future__ import annotations

RECIPE_YAML = "recipe.yaml"  # the resolved recipe the run trained with
ENV_JSON = "env.json"  # versions, device, git commit, seed, command line
HISTORY_JSONL = "history.jsonl"  # one line per epoch
LOCK = ".lock"  # held while a process trains in the run
METRICS_JSON = "metrics.json"  # an evaluation's summary, written last: it says the others are complete
#: metrics.json's (and an export card's) key for the sha256 of the checkpoint bytes scored (exported)
CHECKPOINT_DIGEST = "checkpoint_sha256"
PER_SLICE_CSV = "per_slice.csv"  # the paper convention's per-slice scores
PER_VOLUME_CSV = "per_volume.csv"  # per-volume scores (of either convention: SCORE_CSVS)
RECON_H5 = "recon.h5"  # the reconstructions scored
#: evaluation folders within a run start with this: RUN/eval-<model>/, RUN/eval-<file>-<format>/,
#: then .../eval-data-<dataset>-<fingerprint>/, .../eval-split-<split>/, .../eval-amp-<amp>/, .../eval-fastmri/
#: (`sftkd_cli.eval_folders`)
EVAL_PREFIX = "eval-"
CHECKPOINTS = "checkpoints"  # RUN/checkpoints/<best|last>.pt
EXPORTS = "export"  # RUN/export/: where `sftkd export` writes by default
#: export format -> the exported file's suffix; its model card lies beside it as <file>CARD_SUFFIX
EXPORT_SUFFIX: dict[str, str] = {"torchscript": ".ts", "onnx": ".onnx"}
CARD_SUFFIX = ".card.json"

#: what one evaluation writes into the run or an evaluation folder within it (EVAL_PREFIX);
#: metrics.json last: it says the others are complete
EVAL_FILES = (PER_SLICE_CSV, PER_VOLUME_CSV, RECON_H5, METRICS_JSON)
#: what sftkd writes into a run directory: the only names `--force` removes (with the checkpoints)
RUN_FILES = (RECIPE_YAML, ENV_JSON, HISTORY_JSONL, LOCK, *EVAL_FILES)


def checkpoint_file(name: str) -> str:
    """Where checkpoint `name` (best, last) lies within its run: checkpoints/<name>.pt."""
    return f"{CHECKPOINTS}/{name}.pt"


#: per score convention (`evaluate --convention`): the folder its scores go to within the results
#: folder ("" = that folder itself), its per-unit CSV, and what one CSV row scores
SCORE_FILES: dict[str, tuple[str, str, str]] = {
    "paper": ("", PER_SLICE_CSV, "slice"),  # the paper's reference evaluation
    "fastmri": (f"{EVAL_PREFIX}fastmri", PER_VOLUME_CSV, "volume"),  # the fastmri package's evaluate.py
}

#: per score convention: the CSVs it writes beside metrics.json and recon.h5, its per-unit one
#: (SCORE_FILES) first; the paper convention's per_volume.csv holds each volume's scores in that
#: convention (PSNR, NMSE over the whole volume, others the mean of its slices), which its
#: per_slice.csv cannot give back
SCORE_CSVS: dict[str, tuple[str, ...]] = {"paper": (PER_SLICE_CSV, PER_VOLUME_CSV), "fastmri": (PER_VOLUME_CSV,)}
