"""The plan's report folder as sftkd's own: its status.json (read back, and what it was written
for) and the check, before any stage runs, that the folder holds no one else's files.

Why: a plan's `report:` may name any folder, and the report stage replaces report.md,
status.json, the compare files and the figures there; a folder holding the user's own files
must be refused, not silently overwritten. And a fixed `report:` folder can be shared by runs of
the plan with another --runs-dir or other command-line overrides: a report written for those is
not up to date for these, and its status rows are not these runs'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.files import read_regular_bytes
from sftkd_cli.reproduce.kinds import STATUS_JSON
from sftkd_cli.reproduce.spec import Plan

#: what a report folder holds before its first report is written: the stage logs (--jobs) and
#: the tracebacks of unexpected errors
BEFORE_REPORT = frozenset({"logs", "errors.log"})


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
    """Refuse a report folder that exists, is not empty, and holds neither a report of sftkd
    reproduce (its status.json) nor only what a plan writes there before its first report (logs,
    errors.log): the report would replace files that are not sftkd's. One line naming it."""
    folder = plan.report_dir
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise SftkdError(f"{plan.path}: report {folder}: is not a folder; expected a folder for the report") from None
    except OSError as exc:
        raise SftkdError(f"{plan.path}: report {folder}: cannot be read ({os_error_text(exc)})") from None
    if set(names) <= BEFORE_REPORT or read_status(folder / STATUS_JSON) is not None:
        return
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise SftkdError(f"{plan.path}: report {folder}: holds files sftkd reproduce did not write ({shown}) and no "
                     f"{STATUS_JSON} of a report; the report would replace them: give the plan a new or empty "
                     "`report:` folder, or move those files away")
