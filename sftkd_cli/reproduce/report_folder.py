"""The plan's report folder as sftkd's own: its status.json (read back, and what it was written
for) and the check, before any stage runs, that the report replaces no one else's files there.

Why: a plan's `report:` may name any folder, and the report stage replaces report.md,
status.json, the compare files and the figures there; a file of the user's at one of those
names must be refused, not silently overwritten (the folder's other files are never touched). And a fixed `report:` folder can be shared by runs of
the plan with another --runs-dir or other command-line overrides: a report written for those is
not up to date for these, and its status rows are not these runs'.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError, names_shown, os_error_text
from sftkd_cli.files import read_regular_bytes
from sftkd_cli.reproduce.kinds import REPORT_MD, STATUS_JSON
from sftkd_cli.reproduce.spec import Plan

#: report.md's first line starts so (how `check_report_folder` tells a report.md sftkd wrote)
REPORT_HEADING = "# sftkd reproduce: "


def written_for(plan: Plan) -> dict[str, Any]:
    """What a report shows, beyond the plan file: the runs folder, the dataset and the
    command-line overrides (absolute paths: a relative one names another folder from another
    directory). status.json keeps it; a report written for another is stale."""
    return {"runs_dir": os.path.abspath(plan.runs_dir), "data": os.path.abspath(plan.data.out),
            "overrides": list(plan.overrides)}


def read_status(path: Path) -> dict[str, Any] | None:
    """The status.json at `path` as `write_report` writes it (format 1, a list of stages); None
    when it is missing, unreadable, a link, or not one (then the folder has no report of sftkd's)."""
    try:
        status = json.loads(read_regular_bytes(path, "status", follow_links=False))
    except (SftkdError, ValueError):
        return None
    if not (isinstance(status, dict) and status.get("format") == 1 and isinstance(status.get("stages"), list)):
        return None
    return status


def check_report_folder(plan: Plan) -> None:
    """Refuse, in one line, a report folder holding a file the report would replace (report.md,
    the compare files, the figures: `_REPORT_FILE`) that sftkd did not write, told by its content
    (`_written_by_sftkd`); its other files and folders (runs, a dataset, the user's notes) are
    never touched. A folder with sftkd's status.json is a report folder of sftkd's as it is (its
    figures may be an earlier sftkd's, which signed none)."""
    folder = plan.report_dir
    if read_status(folder / STATUS_JSON) is not None:
        return
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise SftkdError(f"{plan.path}: report {folder}: is not a folder; expected a folder for the report") from None
    except OSError as exc:
        raise SftkdError(f"{plan.path}: report {folder}: cannot be read ({os_error_text(exc)})") from None
    foreign = [name for name in names if _REPORT_FILE.fullmatch(name) and not _written_by_sftkd(folder / name)]
    if foreign:
        raise SftkdError(f"{plan.path}: report {folder}: holds {names_shown(foreign, 3)}, which sftkd reproduce did not write and the "
                         "report would replace: give the plan a new or empty `report:` folder, or move them away")


def recorded_files(status: dict[str, Any] | None) -> set[str]:
    """The compare files and figures an earlier report wrote, as its status.json (`read_status`)
    lists them under "files": only plain names of report files (no path, not report.md nor
    status.json). None recorded (no status.json, an earlier sftkd's that kept no list, a
    damaged list): an empty set, so nothing is ever removed on a guess."""
    names = status.get("files") if status is not None else None
    if not isinstance(names, list):
        return set()
    return {name for name in names if isinstance(name, str) and _REPORT_FILE.fullmatch(name)
            and "/" not in name and "\\" not in name and name not in (REPORT_MD, STATUS_JSON)}


def remove_stale_files(folder: Path, earlier: set[str], written: set[str]) -> None:
    """Remove the compare files and figures the earlier report wrote (`earlier`: the names its
    status.json listed, `recorded_files`) that this report did not write again (`written`): e.g.
    of runs it now leaves out, which would otherwise sit beside its report.md as if they were its
    results. Only those names: a file of the user's in the folder (`sftkd compare --out
    <report>/compare-mine.csv`) is never the report's to remove, whatever its name and content;
    and only a regular file (not a link) still holding sftkd's content (`_sftkd_content`)."""
    for name in sorted(earlier - written):
        if name in (REPORT_MD, STATUS_JSON) or not _REPORT_FILE.fullmatch(name):
            continue
        path = folder / name
        if path.is_file() and not path.is_symlink() and _sftkd_content(path):
            path.unlink(missing_ok=True)


#: the files a report writes (with a variant's or a group's tail: compare-a.csv, box-a.png)
_REPORT_FILE = re.compile(r"report\.md|status\.json|compare.*\.(?:csv|json)|(?:box|curves|grid|attention).*\.(?:png|pdf)")


def _written_by_sftkd(path: Path) -> bool:
    """Whether the report file `path` may be replaced: sftkd wrote it (`_sftkd_content`), it is
    empty, or it is no regular file (a link or FIFO there is replaced, never written through)."""
    from sftkd_cli.output_target import replaceable_output

    if path.is_symlink() or not path.is_file():
        return not path.is_dir()
    return replaceable_output(path, _recogniser(path))


def _sftkd_content(path: Path) -> bool:
    """Whether the regular file `path` holds what sftkd writes there (not empty): only such a
    file may be deleted; an empty one may be the user's (compare-notes.json)."""
    from sftkd_cli.output_target import recognised_output

    return recognised_output(path, _recogniser(path))


def _recogniser(path: Path) -> Callable[[bytes], bool]:
    """How sftkd's content of the report file `path` is told: the report's heading (report.md),
    the figures' signature, compare's formats."""
    from sftkd_cli.report.figures import written_by_sftkd
    from sftkd_cli.report.formats import written_by_compare

    if path.suffix in (".png", ".pdf"):
        return written_by_sftkd
    if path.name == REPORT_MD:
        return lambda data: data.startswith(REPORT_HEADING.encode())
    return written_by_compare
