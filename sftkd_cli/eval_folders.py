"""The levels of evaluation folders below a run's results folder, and the `sftkd evaluate`
command each stands for: `_evaluate` writes there, `compare` and `reproduce` read and name them.

Below the model's folder (RUN, RUN/eval-<model>/ or RUN/eval-<file>-<format>/), in this order:
eval-data-<dataset>-<fingerprint[:8]>/ (data other than the model was trained on),
eval-split-<split>/ (a split other than the recipe's eval.split), eval-amp-<amp>/ (autocast) and
eval-fastmri/ (the fastMRI convention).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from sftkd_cli.choices import BEST
from sftkd_cli.name_checks import check_split_name
from sftkd_cli.run_files import EVAL_PREFIX, METRICS_JSON, RECIPE_YAML, SCORE_FILES
from sftkd_cli.runs import eval_chain, eval_folders

#: the folder (inside the usual output folder) that fastMRI-convention scores go to
FASTMRI_DIR = SCORE_FILES["fastmri"][0]
#: the levels below a results folder for other data, another split and autocast:
#: eval-data-<dataset>-<fingerprint>/, eval-split-<split>/, eval-amp-<amp>/
DATA_LEVEL, SPLIT_LEVEL, AMP_LEVEL = "data-", "split-", "amp-"


def results_folder(out: Path, state: dict[str, Any], record: dict[str, Any], data_path: Path, amp: str,
                   convention: str, split: str | None = None) -> Path:
    """Where the scores go below the model's folder `out`: a level for data other than the model was
    trained on (the scores on its own stay), one for a split other than the recipe's eval.split
    (`split`; None: that split), one for autocast, one for the fastMRI convention."""
    trained_on = (state.get("trained_on") or {}).get("fingerprint")
    if trained_on not in (None, record["fingerprint"]):
        out = out / f"{EVAL_PREFIX}{DATA_LEVEL}{data_path.resolve().name}-{record['fingerprint'][:8]}"
    if split is not None:
        out = split_folder(out, split)
    if amp != "off":
        out = out / f"{EVAL_PREFIX}{AMP_LEVEL}{amp}"
    return out / FASTMRI_DIR if convention == "fastmri" else out


def split_folder(out: Path, split: str) -> Path:
    """Where scores of `split`, a split other than the recipe's eval.split, go below `out`:
    eval-split-<split>/ (`evaluate` writes there, a plan's evaluation stages read there)."""
    check_split_name(split, "--split")  # the dataset's manifest is checked too: a path never leaves `out`
    return out / f"{EVAL_PREFIX}{SPLIT_LEVEL}{split}"


def evaluate_command(folder: Path, info: dict[str, Any]) -> str:
    """The `sftkd evaluate` command that writes results folder `folder` (RUN, or an eval-* folder
    in it) again: the run, then the option each eval-* level below it stands for (`--model`,
    `--data`, `--split`, `--amp`, `--convention`), and a checkpoint other than best."""
    options: list[str] = []
    run, levels = eval_chain(folder)
    for name in levels:
        level = name[len(EVAL_PREFIX):]
        if name == FASTMRI_DIR:
            options += ["--convention", "fastmri"]
        elif level.startswith(AMP_LEVEL):
            options += ["--amp", level[len(AMP_LEVEL):]]
        elif level.startswith(SPLIT_LEVEL):
            options += ["--split", level[len(SPLIT_LEVEL):]]
        elif level.startswith(DATA_LEVEL):
            options += ["--data", str((info.get("dataset") or {}).get("path", "DIR"))]
        else:
            options += ["--model", level]
    which = info.get("checkpoint")
    if isinstance(which, str) and which != BEST:
        options += ["--checkpoint", which]
    return shlex.join(["sftkd", "evaluate", str(run), *options])


def other_evaluations(compared: list[Path]) -> list[Path]:
    """The paper-convention scores inside the compared runs that are not compared themselves
    (RUN/eval-split-test, an SFT run's eval-student, ...): `compare` names them, as a run folder
    stands for its own scores only."""
    given = {folder.resolve() for folder in compared}
    return [folder for run in compared if (run / RECIPE_YAML).is_file() for folder in sorted(eval_folders(run))
            if FASTMRI_DIR not in folder.relative_to(run).parts and (folder / METRICS_JSON).is_file()
            and folder.resolve() not in given]
