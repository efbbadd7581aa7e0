"""What sftkd knows about each KD method besides its formula: label, default taps, help line.

The one place a KD method is described. The loss classes (`sftkd_cli.distill.methods`) take
their spec from here; command help, the default feature taps of `distill`, compare's and the
report's labels, figures and tests all read `CATALOG`. Light on purpose (no torch): command
help imports it. Adding a method: its class in `methods.py` and its `MethodSpec` here.

Feature taps cover the image (H x W). The reference code's maps also hold each block's 5-pixel
zero-padding border (it crops only in data consistency), so its feature losses see a ring of
pixels sftkd's do not: the same maps inside the image, different loss values (on one demo
batch, AT with {normalize: batch, distance: l1}: 0.085 here, 0.078 with the border).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sftkd_cli.errors import SftkdError, did_you_mean


class Tappable(Protocol):
    """What default taps need to know about a network (`models.CascadeNet` has it)."""

    cascades: int

    def default_tap(self, cascade: int, role: str) -> str: ...


#: the roles a default KD tap can play, see `CascadeNet.default_tap`
TAP_ROLES: tuple[str, ...] = ("last_hidden", "hidden_before_last", "output")


@dataclass(frozen=True)
class TapRule:
    """Which features a method pairs by default: the student's `student` role against the
    teacher's `teacher` role (roles: TAP_ROLES), in every shared cascade or only
    the middle one."""

    student: str
    teacher: str
    middle_only: bool = False

    def __post_init__(self) -> None:
        assert {self.student, self.teacher} <= set(TAP_ROLES), (self.student, self.teacher)

    def pairs(self, student: Tappable, teacher: Tappable) -> tuple[list[str], list[str]]:
        """(student taps, teacher taps), e.g. (['c1.conv2', ...], ['c1.conv3', ...]). A cascade where
        either network has no feature of the role (VDSR4's last block has no hidden conv) is left out."""
        shared = min(student.cascades, teacher.cascades)
        cascades = [(shared + 1) // 2] if self.middle_only else range(1, shared + 1)
        kept = [c for c in cascades if student.default_tap(c, self.student) and teacher.default_tap(c, self.teacher)]
        return ([f"c{c}.{student.default_tap(c, self.student)}" for c in kept],
                [f"c{c}.{teacher.default_tap(c, self.teacher)}" for c in kept])


@dataclass(frozen=True)
class BatchOption:
    """A method option value that makes a per-slice loss relate the slices of a batch (AT's
    normalize: batch), so that a batch of one slice gives it exactly 0; `effect` in words."""

    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class MethodSpec:
    """One KD method: its name (`--method`), display label (tables, figures), one-line summary
    (help), default taps (None: no feature taps) and those taps in words, with how they differ
    from the public reference code. `between_samples`: its loss compares the samples of a batch
    with each other (B x B matrices), so a batch of one slice gives it exactly 0; `batch_option`:
    the option value with that effect on an otherwise per-slice loss. Read both through
    `between_samples`, which sees the options too."""

    name: str
    label: str
    summary: str
    taps: TapRule | None
    taps_text: str
    aliases: tuple[str, ...] = ()  # other spellings found in older runs' recipes
    between_samples: bool = False
    batch_option: BatchOption | None = None


_EVERY_CASCADE = TapRule("last_hidden", "last_hidden")
_EVERY_CASCADE_TEXT = "last hidden conv (32 ch, after ReLU) of every cascade"

#: every KD method, in the order help and tables list them
CATALOG: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("at", "AT", "attention transfer (Zagoruyko & Komodakis)",
               TapRule("last_hidden", "hidden_before_last"),
               "student conv-2 vs teacher conv-3 (32 ch, after ReLU) of every cascade "
               "(the reference's pairing for D3C5 <- D5C5)",
               batch_option=BatchOption("normalize", "batch", "normalises each pixel across the slices of a batch")),
    MethodSpec("fitnets", "Fitnets", "FitNets hint regression (Romero et al.)",
               TapRule("output", "output", middle_only=True),
               "last conv output (1 ch, before DC) of the middle cascade (cascade 3 of 5), as the reference "
               "(whose loss there is AT's batch-normalised map with L1, not a hint regression)",
               aliases=("fitnet",)),
    MethodSpec("cc", "CC", "correlation congruence (Peng et al.)", _EVERY_CASCADE,
               _EVERY_CASCADE_TEXT + " (the reference used each cascade's 1-channel last conv output, with "
               "RepDistiller's mean over the batch of |F_s - F_t| products of consecutive samples, not Peng et al.'s kernel)",
               between_samples=True),
    MethodSpec("fsp", "FSP", "flow of solution procedure (Yim et al.)", _EVERY_CASCADE,
               _EVERY_CASCADE_TEXT + "; FSP matrices between consecutive cascades' taps "
               "(the reference used the squared 1-channel last conv outputs of cascades 1-4)"),
    MethodSpec("sp", "SP", "similarity preserving (Tung & Mori)", _EVERY_CASCADE,
               _EVERY_CASCADE_TEXT + " (the reference used the 1-channel last conv outputs of cascades 1-4 "
               "and averaged their losses; sftkd sums over pairs, as Tung & Mori)", between_samples=True),
    MethodSpec("pkt", "PKT", "probabilistic knowledge transfer (Passalis & Tefas)", _EVERY_CASCADE,
               _EVERY_CASCADE_TEXT, between_samples=True),
    MethodSpec("nst", "NST", "neuron selectivity transfer (Huang & Wang)", _EVERY_CASCADE, _EVERY_CASCADE_TEXT),
    MethodSpec("ft", "FT", "factor transfer (Kim et al.)", _EVERY_CASCADE,
               _EVERY_CASCADE_TEXT + " (one paraphraser/translator per tap)"),
    MethodSpec("none", "none", "no feature loss: output imitation with distill.w_imit > 0, else plain L1", None,
               "no feature taps"),
)}


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name` (case-insensitive); one line naming the nearest otherwise."""
    key = str(name).lower()
    if key not in CATALOG:
        raise SftkdError(f"distill.method '{name}': expected one of {', '.join(CATALOG)}{did_you_mean(key, CATALOG, quoted=True)}")
    return CATALOG[key]


def between_samples(method: str, options: Mapping[str, Any]) -> str:
    """Why method `method` with distill.options `options` relates the slices of a batch to each
    other, so that a batch of one slice gives it exactly 0 KD loss ('SP compares the slices of a
    batch with each other'), for the batch-size refusal and the lone-last-batch note; '' for a
    per-slice loss. The one place that decides it: the method alone, or one of its options."""
    spec = method_spec(method)
    if spec.between_samples:
        return f"{spec.label} compares the slices of a batch with each other"
    option = spec.batch_option
    if option is not None and options.get(option.key) == option.value:
        return f"{spec.label} with distill.options.{option.key} {option.value} {option.effect}"
    return ""


def method_label(name: str) -> str:
    """The display label of method `name` (or one of its aliases); unknown names as given."""
    key = name.lower()
    for spec in CATALOG.values():
        if key == spec.name or key in spec.aliases:
            return spec.label
    return name


def default_taps(method: str, student: Tappable, teacher: Tappable) -> tuple[list[str], list[str]]:
    """The feature pairs method `method` distils by default between these two networks."""
    rule = method_spec(method).taps
    return ([], []) if rule is None else rule.pairs(student, teacher)


def taps_help() -> str:
    """The default feature taps of every method, in words, for `distill --help`."""
    return "; ".join(f"{spec.name}: {spec.taps_text}" for spec in CATALOG.values() if spec.taps is not None)


def methods_help() -> str:
    """The `--method` choices for command help: 'at, fitnets, ..., or none (what none does).'"""
    *first, last = CATALOG.values()
    return f"{', '.join(spec.name for spec in first)}, or {last.name} ({last.summary})."
