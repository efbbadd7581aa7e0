"""`sftkd reproduce`: how a plan reads its stages' state on disk (complete, partial, refused, up
to date), and what the dry run and the estimate predict from it.

Device: CPU.
"""

from __future__ import annotations

import json
import os

from test_reproduce import write_plan

from sftkd_cli.reproduce import build_stages, load_plan


def test_an_evaluation_of_the_last_checkpoint_is_redone_after_the_run_resumed(tmp_path, tiny_dataset):
    """checkpoint: last scores last.pt, which a resumed run rewrites while best.pt may stay: the
    scores are out of date when last.pt is newer than metrics.json, whatever best.pt's age."""
    from sftkd_cli.reproduce.stages import evaluation_complete

    def evaluation(checkpoint: str):
        plan = load_plan(write_plan(tmp_path, tiny_dataset, f"  evaluate: {{checkpoint: {checkpoint}}}\n"))
        return plan, next(s for s in build_stages(plan) if s.id == "eval-teacher")

    plan, stage = evaluation("last")
    run = stage.run
    (run / "checkpoints").mkdir(parents=True)
    (run / "recon.h5").write_bytes(b"")
    metrics = {"dataset": {"split": "val"}, "checkpoint": "last"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    stamps = {"checkpoints/best.pt": 100, "metrics.json": 200, "checkpoints/last.pt": 150}
    for name, stamp in stamps.items():
        (run / name).touch()
        os.utime(run / name, (stamp, stamp))
    assert evaluation_complete(stage, plan)
    os.utime(run / "checkpoints" / "last.pt", (300, 300))  # resumed: last.pt moved on, best.pt did not improve
    assert not evaluation_complete(stage, plan)
    (run / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": "best"}))
    os.utime(run / "metrics.json", (200, 200))
    plan, stage = evaluation("best")  # the best checkpoint's scores still hold
    assert evaluation_complete(stage, plan)
