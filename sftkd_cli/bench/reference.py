"""The "reference way" of `sftkd bench`: the networks as the paper's code computes them (NCHW,
every conv padded on the full map) and its KD step (backprop through the teacher), each timed
beside sftkd's way in the same run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.bench.flops import module_conv_flops
from sftkd_cli.bench.measure import slice_batch
from sftkd_cli.choices import STUDENT, TEACHER
from sftkd_cli.distill.methods import KDMethod, NoKD, build_method
from sftkd_cli.models import DCCNN, build_model, parse_name
from sftkd_cli.training.kd import Distillation, default_taps
from sftkd_cli.training.objectives import Batch, TeacherObjective


def reference_way(name: str, acquisition: Acquisition | None = None) -> DCCNN:
    """The network as the reference code computes it: every conv padded on the full padded map.

    Same weights layout and output as `build_model(name)`; timed in NCHW (the reference does not
    use channels_last) to measure, in the same run, what sftkd's choices buy. `acquisition`: the
    data it is built for (`bench --complex`: complex two-channel images), the paper's by default.
    """
    layers, cascades = parse_name(name)
    return DCCNN(layers, cascades, valid=False, acquisition=acquisition).float()


class TeacherBackpropKD(TeacherObjective):
    """The reference code's KD step, for comparison: the same loss as `Distillation`
    (joint schedule), but the teacher keeps requires_grad=True and its features are built
    with autograd on and not detached, so backward also runs through the teacher.
    `kd_objectives` gives it reference-way networks (padded convs), timed in NCHW."""

    def __init__(self, student: DCCNN, teacher: DCCNN, method: KDMethod, student_taps: list[str],
                 teacher_taps: list[str], w_imit: float = 0.0) -> None:
        super().__init__()
        self.model, self.kd = student, method
        teacher.train().requires_grad_(True)
        self.hold_teacher(teacher)  # not optimised, as in the reference
        self.student_taps, self.teacher_taps, self.w_imit = student_taps, teacher_taps, w_imit

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zf, kspace, mask, target = batch["zf"], batch["kspace"], batch["mask"], batch["target"]
        t_out, t_feats = self.teacher(zf, kspace, mask, taps=self.teacher_taps)
        s_out, s_feats = self.model(zf, kspace, mask, taps=self.student_taps)
        students = [s_feats[n] for n in self.student_taps]
        teachers = [t_feats[n] for n in self.teacher_taps]
        if isinstance(self.kd, NoKD) or not students:
            kd = self.kd(students, teachers)
        else:  # KDMethod.forward would detach the teacher maps: call the formula directly
            with torch.autocast(device_type=zf.device.type, enabled=False):
                kd = self.kd.loss([s.float() for s in students], [t.float() for t in teachers])
        rec = F.l1_loss(s_out, target)
        imit = F.l1_loss(s_out, t_out) if self.w_imit > 0 else zf.new_zeros(())
        return rec + kd + self.w_imit * imit, {"rec": rec, "kd": kd, "imit": imit}


def kd_objectives(method: str, batch: Batch, seed: int = 0,
                  acquisition: Acquisition | None = None) -> tuple[Distillation, TeacherBackpropKD, int]:
    """Both KD variants for `method` (same initial weights) and the adapters' forward conv FLOPs."""
    torch.manual_seed(seed)
    teacher, student = build_model(TEACHER, acquisition=acquisition), build_model(STUDENT, acquisition=acquisition)
    s_taps, t_taps = default_taps(method, student, teacher)
    kd = build_method(method, [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    w_imit = 1.0 if method == "none" else 0.0  # "none" is output imitation only
    nograd = Distillation(student, teacher, kd, s_taps, t_taps, w_rec=1.0, w_kd=1.0, w_imit=w_imit)
    twin_teacher, twin_student = reference_way(TEACHER, acquisition), reference_way(STUDENT, acquisition)
    twin_teacher.load_state_dict(teacher.state_dict())
    twin_student.load_state_dict(student.state_dict())
    twin_kd = build_method(method, kd.student_channels, kd.teacher_channels)
    twin_kd.load_state_dict(kd.state_dict())
    backprop = TeacherBackpropKD(twin_student, twin_teacher, twin_kd, s_taps, t_taps, w_imit=w_imit)
    n = next(iter(batch.values())).shape[0]
    adapter = n * _adapter_flops(nograd, slice_batch(batch, 1)) if any(True for _ in kd.parameters()) else 0
    return nograd, backprop, adapter


def _adapter_flops(objective: Distillation, batch: Batch) -> int:
    """Forward conv/linear FLOPs of a KD method's adapters on this batch (run on the CPU, untimed)."""
    cpu = {k: v.cpu() for k, v in batch.items()}
    with torch.no_grad():
        _, t_feats = objective.teacher(cpu["zf"], cpu["kspace"], cpu["mask"], taps=objective.teacher_taps)
        _, s_feats = objective.model(cpu["zf"], cpu["kspace"], cpu["mask"], taps=objective.student_taps)
        students = [s_feats[n] for n in objective.student_taps]
        teachers = [t_feats[n] for n in objective.teacher_taps]
        return module_conv_flops(objective.kd, lambda: objective.kd(students, teachers))

