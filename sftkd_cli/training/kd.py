"""`distill`: a student learns from a frozen teacher with a feature-KD method (SFT-KD-Recon step 2).

Loss (joint schedule, the paper's wording):
    w_rec * L1(student, target) + w_kd * L_method(student features, teacher features)
    + w_imit * L1(student, teacher)
Two-stage schedule (what the reference code does): the first `stage1_epochs` epochs use the
feature loss alone, the rest w_rec * L1(student, target) + w_imit * L1(student, teacher). The
second stage starts with a fresh Adam and LR schedule (train.lr, StepLR counted from its first
epoch), as the reference trains it as a new run; it goes on from the first stage's last weights,
where the reference loads the first stage's best by validation feature loss, which sftkd does not
compute.

The teacher is frozen, held outside the module tree (never optimised or saved with the
student), and runs under `torch.no_grad`: no graph is built and nothing back-propagates
through it. KD adapters (FitNets regressors, CC embeddings, FT paraphrasers) are part of
the objective and are trained with the student.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console


from sftkd_cli.choices import INIT_RANDOM, INIT_SFT, JOINT, SFT_TEACHER, TWO_STAGE
from sftkd_cli.checkpoints import check_fits_data, model_of, read_checkpoint
from sftkd_cli.config import Recipe, check_distill_schedule, with_model
from sftkd_cli.distill.catalog import default_taps
from sftkd_cli.distill.methods import KDMethod, build_method
from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.init_from import check_distill_init
from sftkd_cli.models import CascadeNet
from sftkd_cli.runs import RunDir
from sftkd_cli.training.engine import FitResult
from sftkd_cli.training.lines import STAGE_LOSSES
from sftkd_cli.training.objectives import Batch, TeacherObjective
from sftkd_cli.training.resume import ResumePoint
from sftkd_cli.training.session import model_for, recorded_start, run_training, start_weights, with_run


class Distillation(TeacherObjective):
    """Student + KD method (with its adapters); the frozen teacher rides along unregistered."""

    primary = "model"
    weights_section = "distill"

    def __init__(
        self,
        student: CascadeNet,
        teacher: CascadeNet,
        method: KDMethod,
        student_taps: list[str],
        teacher_taps: list[str],
        *,
        w_rec: float = 1.0,
        w_kd: float = 1.0,
        w_imit: float = 0.0,
        schedule: str = JOINT,
        stage1_epochs: int = 0,
        facts: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(student_taps) != len(teacher_taps):
            raise SftkdError(f"distill: {len(student_taps)} student taps but {len(teacher_taps)} teacher taps; they are paired")
        self.model, self.kd = student, method
        teacher.eval().requires_grad_(False)
        self.hold_teacher(teacher)
        self.student_taps, self.teacher_taps = student_taps, teacher_taps
        self.w_rec, self.w_kd, self.w_imit = w_rec, w_kd, w_imit
        self.schedule, self.stage1_epochs = schedule, stage1_epochs
        self.feature_stage = False
        self.facts = facts or {}
        # joint: the student and every adapter in each step; two-stage: stage 1 leaves the student's
        # layers after its last tap out, stage 2 the adapters
        self.uses_every_parameter = schedule == JOINT

    def begin_epoch(self, epoch: int) -> None:
        self.feature_stage = self.schedule == TWO_STAGE and epoch < self.stage1_epochs

    def restarts(self) -> tuple[int, ...]:
        return (self.stage1_epochs,) if self.schedule == TWO_STAGE and self.stage1_epochs > 0 else ()

    def stage(self, epoch: int) -> int | None:
        return (1 if epoch < self.stage1_epochs else 2) if self.schedule == TWO_STAGE else None

    def describe(self) -> str:
        facts = self.facts
        schedule = (f"two-stage: {counted(self.stage1_epochs, 'epoch')} of {STAGE_LOSSES[1]}, then {STAGE_LOSSES[2]}"
                    if self.schedule == TWO_STAGE else "joint")
        return f"teacher {facts.get('teacher_run')}, method {facts.get('method')}, init {facts.get('init')}, {schedule}"

    def last_batch_note(self, slices: int, per_process: int) -> str:
        relating = self.kd.between_samples()
        if relating and per_process < 2:  # every batch a lone slice: no KD term at all
            raise SftkdError(f"distill.method {self.kd.name}: {relating}, but each process trains on "
                             f"{counted(per_process, 'slice')}; expected 2 or more "
                             "(a larger train split or data.max_train_slices)")
        if slices != 1 or not relating:
            return ""
        return (f"note: the last batch of each epoch holds 1 slice; {relating}, so that step gets no KD term "
                "(a train.batch_size that leaves 0 or 2+ slices over avoids it)")

    def graph_key(self) -> bool:
        return self.feature_stage  # stage 1 computes the feature loss alone

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zf, kspace, mask, target = batch["zf"], batch["kspace"], batch["mask"], batch["target"]
        use_kd = self.schedule == JOINT or self.feature_stage
        use_imit = self.w_imit > 0 and not self.feature_stage
        zero = zf.new_zeros(())
        with torch.no_grad():
            if use_kd and self.teacher_taps:
                t_out, t_feats = self.teacher(zf, kspace, mask, taps=self.teacher_taps)
            else:
                t_out, t_feats = (self.teacher(zf, kspace, mask) if use_imit else None), {}
        if use_kd and self.student_taps:
            s_out, s_feats = self.model(zf, kspace, mask, taps=self.student_taps)
            kd = self.kd([s_feats[n] for n in self.student_taps], [t_feats[n] for n in self.teacher_taps])
        else:
            s_out, kd = self.model(zf, kspace, mask), zero
        parts = {
            "rec": F.l1_loss(s_out, target),
            "kd": kd,
            "imit": F.l1_loss(s_out, t_out) if use_imit else zero,
        }
        if self.feature_stage:
            return self.w_kd * kd, parts
        loss = self.w_rec * parts["rec"] + (self.w_kd * kd if use_kd else zero) + self.w_imit * parts["imit"]
        return loss, parts

    def models(self) -> dict[str, CascadeNet]:
        return {"model": self.model}


def teacher_role_of(state: dict[str, Any]) -> str:
    """'sft-teacher' for the teacher of an SFT run, else 'teacher'."""
    return SFT_TEACHER if state.get("role") == "sft" else "teacher"


def _with_kd_run(recipe: Recipe, teacher_role: str | None) -> Recipe:
    """Fill in the KD run's role and default name (`<method>-<std|sft>-<student>`)."""
    kind = "sft" if teacher_role == SFT_TEACHER else "std"
    return with_run(recipe, "kd", f"{recipe.distill.method.lower()}-{kind}-{recipe.model.name.upper()}")


def _with_student(recipe: Recipe) -> Recipe:
    """model.name defaulting to sft.student, once the distill section is known to be usable."""
    cfg = recipe.distill
    if cfg.schedule == TWO_STAGE and cfg.method == "none":
        raise SftkdError("distill.schedule=two-stage: needs a feature method (stage 1 is the feature loss alone), not none")
    if not cfg.teacher_run:
        raise SftkdError("distill.teacher_run: expected the teacher's run directory (--teacher RUN)")
    return with_model(recipe, recipe.sft.student)


def resolved_distill(recipe: Recipe) -> Recipe:
    """The recipe `distill` trains: model.name (default sft.student), run role and name (read
    from the teacher run whether it is an SFT run; a recipe without its teacher yet keeps its name)."""
    if not recipe.distill.teacher_run:
        recipe = with_model(recipe, recipe.sft.student)
        return replace(recipe, run=replace(recipe.run, role=recipe.run.role or "kd"))
    recipe = _with_student(recipe)
    return _with_kd_run(recipe, teacher_role_of(read_checkpoint(recipe.distill.teacher_run).state))


def check_distill(recipe: Recipe, *, resume: bool = False) -> None:
    """What `distill` refuses before any work (the command's --print-recipe too): the schedule and
    weights (`check_distill_schedule`) and, unless `resume` (a resumed run starts from its checkpoint;
    the start it named may be gone by now), distill.init (`check_distill_init`)."""
    check_distill_schedule(recipe)
    if not resume:
        check_distill_init(recipe.distill.init)


def distill(
    recipe: Recipe,
    *,
    resume: bool = False,
    force: bool = False,
    console: Console | None = None,
) -> tuple[RunDir, FitResult]:
    """Distill `recipe.model` from the teacher run `recipe.distill.teacher_run`.

    `console`: where the start line and epoch lines go (default: a rich Console on stdout, with
    the progress bar on stderr; `Console(quiet=True)` for none). Returns the run folder and the fit's summary."""
    check_distill(recipe, resume=resume)  # as the command (--print-recipe too) and a plan check it
    recipe = _with_student(recipe)
    cfg = recipe.distill
    check_teacher_idle(cfg.teacher_run)
    # read once: the teacher, the sha256 recorded for it and an SFT run's student blocks come from the same bytes
    teacher_file = read_checkpoint(cfg.teacher_run)
    t_state = teacher_file.state
    teacher = model_of(t_state, None, teacher_file.path)  # the primary: an SFT run's is its teacher
    teacher_role = teacher_role_of(t_state)
    init = cfg.teacher_run if cfg.init == INIT_SFT else cfg.init
    if cfg.init == INIT_SFT and teacher_role != SFT_TEACHER:
        raise SftkdError(f"distill.init=sft: {cfg.teacher_run} is not an SFT run; give a run or checkpoint to start from")
    recipe = _with_kd_run(recipe, teacher_role)

    def make(data: dict[str, object], point: ResumePoint | None) -> Distillation:
        check_fits_data(t_state, teacher.record(), data, cfg.teacher_run, same_acquisition=True)
        student = model_for(recipe, recipe.model.name, data)
        # resumed: the weights come from the run's checkpoint, which records what it started from
        loaded, loaded_sha256 = recorded_start(point) or (
            start_weights(student, teacher_file, role="student") if cfg.init == INIT_SFT  # the SFT run's student blocks
            else start_weights(student, None if init in INIT_RANDOM else read_checkpoint(init)))
        s_taps, t_taps = default_taps(cfg.method, student, teacher)
        s_taps = cfg.student_taps or s_taps
        t_taps = cfg.teacher_taps or t_taps
        method = build_method(
            cfg.method,
            [student.tap_channels(t, "distill.student_taps") for t in s_taps],
            [teacher.tap_channels(t, "distill.teacher_taps") for t in t_taps],
            **cfg.options,
        )
        facts = {"teacher_role": teacher_role, "teacher_run": str(cfg.teacher_run), "teacher_sha256": teacher_file.sha256,
                 "teacher_epoch": t_state.get("epoch"), "init": loaded, "init_sha256": loaded_sha256,
                 "method": cfg.method, "student_taps": s_taps, "teacher_taps": t_taps}
        return Distillation(student, teacher, method, s_taps, t_taps, w_rec=cfg.w_rec, w_kd=cfg.w_kd,
                            w_imit=cfg.w_imit, schedule=cfg.schedule, stage1_epochs=cfg.stage1_epochs, facts=facts)

    sources = [cfg.teacher_run, "" if init in INIT_RANDOM else init]
    return run_training(recipe, make, resume=resume, force=force, console=console, sources=sources)


def check_teacher_idle(teacher_run: str | Path) -> None:
    """Refuse, in one line, a teacher run that another process is still training (it holds the
    run's lock): its best.pt changes with every better epoch, so the student would learn from
    whichever teacher was best at the moment it was read."""
    if Path(teacher_run).is_dir() and RunDir(Path(teacher_run)).busy():
        raise SftkdError(f"teacher run {teacher_run} is still training (another sftkd process holds it); "
                         "wait for it to finish")
