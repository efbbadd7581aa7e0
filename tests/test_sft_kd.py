"""SFT branch structure and the distillation objective (no dataset needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sftkd_cli.distill.methods import build_method
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import build_model
from sftkd_cli.training.kd import Distillation, default_taps
from sftkd_cli.training.sft import StudentFriendly
from test_engine import Phantoms

torch.set_num_threads(1)


def _batch(n=2):
    ds = Phantoms(n)
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in ("target", "zf", "kspace", "mask")}


def _pair(seed=0):
    torch.manual_seed(seed)
    return build_model("D4C3"), build_model("D2C3")


def test_batched_branches_equal_the_naive_branch_loop():
    teacher, student = _pair()
    batch = _batch()
    batched = StudentFriendly(teacher, student, batched=True)
    naive = StudentFriendly(teacher, student, batched=False)
    loss_b, parts_b = batched(batch)
    loss_n, parts_n = naive(batch)
    torch.testing.assert_close(loss_b, loss_n)
    for key in parts_b:
        torch.testing.assert_close(parts_b[key], parts_n[key])


def test_sft_loss_is_the_papers_formula_computed_by_hand():
    teacher, student = _pair(1)
    batch = _batch()
    zf, k, m, x = batch["zf"], batch["kspace"], batch["mask"], batch["target"]
    loss, _ = StudentFriendly(teacher, student, 1.0, 0.5, 2.0)(batch)
    t1 = teacher.cascade(0, zf, k, m)
    t2 = teacher.cascade(1, t1, k, m)
    t3 = teacher.cascade(2, t2, k, m)
    branch1 = student.cascade(2, student.cascade(1, t1, k, m), k, m)  # T1 -> S2 -> S3
    branch2 = student.cascade(2, t2, k, m)  # T2 -> S3
    expected = (
        F.l1_loss(t3, x)
        + 0.5 * (F.l1_loss(branch1, x) + F.l1_loss(branch2, x)) / 2
        + 2.0 * (F.l1_loss(branch1, t3) + F.l1_loss(branch2, t3)) / 2
    )
    torch.testing.assert_close(loss, expected)


def test_sft_gradients_s1_untouched_and_branch_losses_reach_feeding_teacher_blocks():
    teacher, student = _pair(2)
    objective = StudentFriendly(teacher, student, w_teacher=0.0, w_student=1.0, w_imit=0.0)
    loss, _ = objective(_batch())
    loss.backward()
    assert all(p.grad is None for p in student.blocks[0].parameters())  # S1 in no branch
    assert all(not p.requires_grad for p in student.blocks[0].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.blocks[1].parameters())
    # with only the student loss, T1 and T2 feed branches and get gradients; T3 feeds none
    assert teacher.blocks[0].convs[0].weight.grad.abs().sum() > 0
    assert teacher.blocks[1].convs[0].weight.grad.abs().sum() > 0
    grad = teacher.blocks[2].convs[0].weight.grad
    assert grad is None or not grad.any()


def test_sft_imitation_term_trains_the_teacher_too():
    """Nothing is detached: with only the imitation loss, the last teacher block (which feeds no
    branch, only the imitation target) still gets a gradient."""
    teacher, student = _pair(2)
    objective = StudentFriendly(teacher, student, w_teacher=0.0, w_student=0.0, w_imit=1.0)
    loss, _ = objective(_batch())
    loss.backward()
    assert teacher.blocks[2].convs[0].weight.grad.abs().sum() > 0


def test_sft_requires_the_same_number_of_cascades():
    with pytest.raises(SftkdError, match="same number of cascades"):
        StudentFriendly(build_model("D5C5"), build_model("D3C4"))


def _distillation(method="at", options=None, **kw):
    torch.manual_seed(3)
    teacher, student = build_model("D4C3"), build_model("D3C3")
    s_taps, t_taps = default_taps(method, student, teacher)
    kd = build_method(method, [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps],
                      **(options or {}))
    return Distillation(student, teacher, kd, s_taps, t_taps, **kw), teacher, student


def test_default_taps_follow_the_reference_pairing():
    s, t = default_taps("at", build_model("D3C5"), build_model("D5C5"))
    assert s == [f"c{i}.conv2" for i in range(1, 6)] and t == [f"c{i}.conv3" for i in range(1, 6)]
    s, t = default_taps("fitnets", build_model("D3C5"), build_model("D5C5"))
    assert (s, t) == (["c3.conv3"], ["c3.conv5"])


def test_kd_gradients_reach_student_and_adapters_never_the_teacher():
    objective, teacher, student = _distillation("fitnets", w_imit=1.0)
    loss, parts = objective(_batch())
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert set(parts) == {"rec", "kd", "imit"}
    assert not any(n.startswith("teacher") for n in objective.state_dict())  # teacher not saved


def test_kd_adapters_are_trained_and_saved_with_the_student():
    """CPU: a method's own layers (FT's paraphrasers and translators) are parameters of the
    objective, which the engine hands to Adam and saves as the checkpoint's "objective"."""
    objective, teacher, student = _distillation("ft")
    adapters = list(objective.kd.parameters())
    trained = {id(p) for p in objective.parameters() if p.requires_grad}
    assert adapters and {id(p) for p in adapters} <= trained
    assert trained == {id(p) for p in [*student.parameters(), *adapters]}
    saved = objective.state_dict()
    assert {k for k in saved if k.startswith("kd.")} == {f"kd.{k}" for k in objective.kd.state_dict()}


def test_kd_loss_is_weighted_sum_computed_by_hand():
    objective, teacher, student = _distillation("at", w_rec=0.5, w_kd=3.0, w_imit=2.0)
    batch = _batch()
    loss, _ = objective(batch)
    zf, k, m, x = batch["zf"], batch["kspace"], batch["mask"], batch["target"]
    t_out, t_feats = teacher(zf, k, m, taps=objective.teacher_taps)
    s_out, s_feats = student(zf, k, m, taps=objective.student_taps)

    def at(f):
        q = f.pow(2).mean(1).flatten(1)
        return q / q.norm(dim=1, keepdim=True)

    kd = sum(((at(s_feats[a]) - at(t_feats[b])) ** 2).mean() for a, b in zip(objective.student_taps, objective.teacher_taps)) / 3
    expected = 0.5 * F.l1_loss(s_out, x) + 3.0 * kd + 2.0 * F.l1_loss(s_out, t_out)
    torch.testing.assert_close(loss, expected)


def test_two_stage_schedule_uses_feature_loss_then_reconstruction():
    objective, *_ = _distillation("at", schedule="two-stage", stage1_epochs=1, w_imit=0.0)
    batch = _batch()
    objective.begin_epoch(0)
    loss, parts = objective(batch)
    torch.testing.assert_close(loss, parts["kd"])
    objective.begin_epoch(1)
    loss, parts = objective(batch)
    torch.testing.assert_close(loss, parts["rec"])


def test_two_stage_history_records_the_lr_each_epoch_trained_with(tmp_path, monkeypatch):
    """Stage 2 restarts the LR at train.lr: its first epoch's row says so (as the steps used it)."""
    from test_engine import lrs_trained_and_recorded

    objective = _distillation("at", schedule="two-stage", stage1_epochs=2, w_imit=0.0)[0]
    trained, recorded = lrs_trained_and_recorded(monkeypatch, tmp_path, objective, "train.epochs=4", "train.lr_step=1",
                                                 "train.lr_gamma=0.5", "train.max_steps_per_epoch=1",
                                                 "train.channels_last=false")
    assert trained == recorded == [1e-3, 5e-4, 1e-3, 5e-4]


def test_two_stage_second_stage_starts_a_fresh_adam_and_lr_schedule(tmp_path):
    """Stage 2 (L1 fine-tuning) trains as the reference's new run does: Adam as new and the LR
    back to train.lr, from stage 1's last weights; a resume across the switch is exact."""
    from test_engine import _fit, _weights

    from sftkd_cli.training.engine import batches, epoch_order

    two_stage = dict(schedule="two-stage", stage1_epochs=1, w_imit=0.0)
    options = ("train.lr_step=1", "train.lr_gamma=0.1", "train.max_steps_per_epoch=2", "train.channels_last=false")
    _, straight = _fit(tmp_path, "straight", False, _distillation("at", **two_stage)[0], *options)
    # the LR each epoch trained with: back to train.lr for stage 2 ([1e-3, 1e-4] without the restart)
    assert [row["lr"] for row in straight.read_history()] == pytest.approx([1e-3, 1e-3])

    objective, _, student = _distillation("at", **two_stage)
    _, first = _fit(tmp_path, "split", False, objective, *options, "train.epochs=1")
    stage1 = _weights(first)
    _, resumed = _fit(tmp_path, "split", True, _distillation("at", **two_stage)[0], *options)
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(resumed)[key]), key

    # oracle: stage 1's weights, then a new Adam over epoch 2's two batches of L1 to the target
    student.load_state_dict(stage1)
    objective.begin_epoch(1)
    adam = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
    order = epoch_order(len(Phantoms()), 7, 1)[:4]
    for batch in batches(Phantoms(), order, 2):
        adam.zero_grad()
        objective(batch)[0].backward()
        adam.step()
    for key, value in _weights(straight).items():
        torch.testing.assert_close(value, student.state_dict()[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("slices,batch,world,max_steps,last", [
    (9, 4, 1, 0, 1), (8, 4, 1, 0, 4), (9, 4, 1, 2, 4), (9, 4, 2, 0, 1), (17, 4, 2, 0, 1), (6, 4, 1, 0, 2)])
def test_last_batch_size_follows_the_trainers_cut(slices, batch, world, max_steps, last):
    from sftkd_cli.config import TrainConfig
    from sftkd_cli.training.session import last_batch_size

    assert last_batch_size(slices, TrainConfig(batch_size=batch, max_steps_per_epoch=max_steps), world) == last


def test_a_lone_slice_last_batch_is_noted_for_methods_comparing_slices():
    """9 slices in batches of 4: the last holds 1, where SP's loss is 0; the start says so."""
    note = _distillation("sp")[0].last_batch_note(1, 9)
    assert note.startswith("note: the last batch of each epoch holds 1 slice; SP compares")
    assert _distillation("sp")[0].last_batch_note(2, 9) == ""
    assert _distillation("at")[0].last_batch_note(1, 9) == ""


def test_a_split_of_one_slice_per_process_is_refused_for_methods_comparing_slices():
    """One training slice per process: every batch is a lone slice, so SP never has a KD term (the
    note spoke of 'the last batch' and of a batch size that avoids it; none does)."""
    with pytest.raises(SftkdError, match=r"^distill.method sp: SP compares the slices of a batch with each other, "
                                         r"but each process trains on 1 slice; expected 2 or more"):
        _distillation("sp")[0].last_batch_note(1, 1)
    assert _distillation("at")[0].last_batch_note(1, 1) == ""


def test_a_lone_slice_batch_is_noted_and_refused_for_batch_normalised_at():
    """AT with distill.options.normalize batch normalises each pixel across the batch: a lone
    slice's maps are all ones for teacher and student alike, so that step's KD loss is 0."""
    at_batch = _distillation("at", {"normalize": "batch", "distance": "l1"})[0]
    note = at_batch.last_batch_note(1, 9)
    assert note.startswith("note: the last batch of each epoch holds 1 slice; AT with distill.options.normalize batch "
                           "normalises each pixel across the slices of a batch, so that step gets no KD term")
    assert at_batch.last_batch_note(2, 9) == ""
    with pytest.raises(SftkdError, match=r"^distill.method at: AT with distill.options.normalize batch normalises .* "
                                         r"but each process trains on 1 slice; expected 2 or more"):
        at_batch.last_batch_note(1, 1)
    assert _distillation("at", {"normalize": "sample"})[0].last_batch_note(1, 1) == ""
