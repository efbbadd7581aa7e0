"""Facts with one home: stage labels (`arm_key`) and the training commands (`TRAINING_COMMANDS`)."""

from __future__ import annotations

import pytest

from sftkd_cli.choices import TRAINING_COMMANDS, arm_key, parse_arm_key
from sftkd_cli.report.verdict import arm_label, arm_order
from sftkd_cli.torchrun import DISTRIBUTED_COMMANDS


@pytest.mark.parametrize("kind, method, random_init, key", [
    ("teacher", None, False, "teacher"),
    ("std-kd", "at", False, "std-kd-at"),
    ("sft-kd", "at", True, "sft-kd-at-random"),
    ("sft-kd", None, True, "sft-kd-random"),
])
def test_arm_key_spells_a_stage_label(kind: str, method: str | None, random_init: bool, key: str) -> None:
    assert arm_key(kind, method, random_init) == key


@pytest.mark.parametrize("key, parsed", [
    ("std-kd-at", ("std-kd", "at", False)),
    ("sft-kd-at-random", ("sft-kd", "at", True)),
    ("sft-kd-ours-v2", ("sft-kd", "ours-v2", False)),
    ("teacher", None),
    ("sft-student", None),
    ("std-kd", None),
    ("sft-kd-random", None),  # arm_key("sft-kd", random_init=True): a model column, no method
])
def test_parse_arm_key_reads_a_kd_label_back(key: str, parsed: tuple[str, str, bool] | None) -> None:
    assert parse_arm_key(key) == parsed
    if parsed is not None:
        assert arm_key(*parsed) == key


def test_the_report_labels_and_orders_arms_by_their_keys() -> None:
    keys = ["sft-kd-at-random", "student", "sft-kd-at", "teacher", "std-kd-at", "sft-student", "sft"]
    assert arm_order(keys) == ["teacher", "sft", "student", "sft-student", "std-kd-at", "sft-kd-at", "sft-kd-at-random"]
    assert arm_label("sft-kd-at-random") == "SFT-KD-Recon random init (AT)"
    assert arm_label("std-kd-at") == "Std-KD (AT)"


def test_the_training_commands_are_the_distributed_ones() -> None:
    assert DISTRIBUTED_COMMANDS == tuple(TRAINING_COMMANDS)
    assert sorted(role for roles in TRAINING_COMMANDS.values() for role in roles) == ["kd", "sft", "student", "teacher"]
