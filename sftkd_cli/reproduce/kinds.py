"""The words of a reproduction plan (the stage kinds themselves are in `sftkd_cli.choices`, which
command help reads): their run roles and recipe files, the report's
column names, and the statuses a stage ends with.

A leaf module (it imports only `sftkd_cli.choices`), so that the plan reader, the stages, the
runner and the report can all share these names without importing each other.
"""

from __future__ import annotations

from sftkd_cli.choices import SFT_STUDENT, arm_key

PLAN_FORMAT = 1
SHAREABLE: tuple[str, ...] = ("teacher", "student", "sft")
ROLE = {"teacher": "teacher", "student": "student", "sft": "sft", "std-kd": "kd", "sft-kd": "kd"}
RECIPE_FILE = {"teacher": "teacher.yaml", "student": "student.yaml", "sft": "sft.yaml",
               "std-kd": "std-kd-{method}.yaml", "sft-kd": "sft-kd-{method}.yaml"}
STUDENT_SETTINGS = {"teacher": "Original", "student": "Original", "std-kd": "KD", "sft-kd": "SFT-KD-Recon"}
#: columns of the `models` paper layout -> the trained kind they show (Table 5)
MODEL_COLUMNS = {"Teacher": "teacher", "Student": "student", "SFT Teacher": "sft", "SFT Student": SFT_STUDENT,
                 "KD": "std-kd", "SFT-KD-Recon (random)": arm_key("sft-kd", random_init=True), "SFT-KD-Recon": "sft-kd"}

#: the report folder's summary, and the stages' statuses and the problems met (read back on the next run)
REPORT_MD, STATUS_JSON = "report.md", "status.json"

# statuses of a stage after a run, and the actions a dry run announces
DONE, RESUMED, SKIPPED, FAILED, INTERRUPTED = "done", "resumed", "skipped", "failed", "interrupted"
#: the note of a stage skipped as up to date (a detail may follow), and the mark on a row
#: of the status table carried over from a previous invocation
UP_TO_DATE, EARLIER = "up to date", "(earlier)"


def marked_earlier(note: str) -> str:
    """`note` marked as coming from a previous invocation (once)."""
    return note if note.startswith(EARLIER) else f"{EARLIER} {note}".rstrip()


def is_up_to_date(note: str) -> bool:
    """Whether a stage's note says it was skipped as up to date (now, or in a previous invocation)."""
    return note.removeprefix(EARLIER).strip().startswith(UP_TO_DATE)
