"""Feature knowledge-distillation losses: one class per method, one interface.

Every method is an `nn.Module` built from the channel counts of the tapped feature maps
and called on two lists of paired maps, `student_feats[i]` (B, Cs_i, H, W) and
`teacher_feats[i]` (B, Ct_i, H, W); it returns a scalar loss. Adapters (regressors,
embedding heads, paraphraser/translator) are sub-modules of the method, so the trainer
optimises `method.parameters()` together with the student and saves `method.state_dict()`
in checkpoints. Adapters start from PyTorch's default initialisation: seed before building.

Shared behaviour (in `KDMethod.forward`):
- teacher maps are detached: no gradient ever flows into the teacher or needs its graph;
- the loss is computed in float32 with autocast disabled (Gram matrices over 10^6
  elements overflow in float16);
- shapes are checked against the declared channel counts; a mismatch is an SftkdError.

Weights (beta in AT, lambda in FSP, gamma in SP, ...) are NOT part of the methods: the
trainer multiplies the returned loss by the recipe's weight.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sftkd_cli.distill.catalog import CATALOG, MethodSpec, between_samples, method_spec
from sftkd_cli.errors import SftkdError, did_you_mean

# --------------------------------------------------------------------------- helpers


def _option(key: str, value: Any, method: str) -> str:
    """A method option as the recipe writes it: "distill.options.p 'x' (method at)"."""
    return f"distill.options.{key} {value!r} (method {method})"


def _choice(method: str, key: str, value: Any, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise a one-line SftkdError."""
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise SftkdError(f"{_option(key, value, method)}: expected one of {expected}")
    return value


def _positive(method: str, key: str, value: Any, integer: bool = False) -> float:
    """Return `value` as a positive number (int when `integer`), else raise SftkdError."""
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise SftkdError(f"{_option(key, value, method)}: expected {kind}")
    return int(value) if integer else float(value)


def _non_negative(method: str, key: str, value: Any, integer: bool = False) -> float:
    """Return `value` as a number >= 0 (int when `integer`), else raise SftkdError."""
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or value < 0:
        kind = "an integer >= 0" if integer else "a number >= 0"
        raise SftkdError(f"{_option(key, value, method)}: expected {kind}")
    return int(value) if integer else float(value)


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 convolution that keeps the spatial size (stride 1, zero padding 1)."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


def _mean(terms: list[Tensor]) -> Tensor:
    """Mean of a list of scalar losses (one per feature pair)."""
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------- base


class KDMethod(nn.Module):
    """Base class: validates and detaches the features, then calls `loss` in float32.

    Subclasses set `spec` (their `catalog.CATALOG` entry: name, label, default taps),
    optionally `min_pairs` and `same_size` (student and teacher maps of a pair must share H
    and W), declare their options as keyword-only arguments of `__init__` and implement
    `loss(students, teachers)`.
    """

    spec: ClassVar[MethodSpec]
    name: ClassVar[str] = ""  # spec.name, set for each subclass
    min_pairs: ClassVar[int] = 1
    same_size: ClassVar[bool] = True

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__()
        s = tuple(int(c) for c in student_channels)
        t = tuple(int(c) for c in teacher_channels)
        if len(s) != len(t):
            raise SftkdError(
                f"distill {self.name}: {len(s)} student tap(s) vs {len(t)} teacher tap(s): "
                "expected the same number"
            )
        if len(s) < self.min_pairs:
            raise SftkdError(
                f"distill {self.name}: {len(s)} feature tap(s): expected at least {self.min_pairs}"
            )
        if any(c < 1 for c in s + t):
            raise SftkdError(f"distill {self.name}: channels {s} / {t}: expected positive counts")
        self.student_channels = s
        self.teacher_channels = t
        self.options: dict[str, Any] = {}  # the options given, recorded by `build_method`

    def between_samples(self) -> str:
        """Why this loss relates the slices of a batch (a batch of one gives 0); '' if it does
        not (`catalog.between_samples`, with the options `build_method` recorded)."""
        return between_samples(self.name, self.options)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.spec.name

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        """Scalar loss between the paired student and (detached) teacher feature maps."""
        students, teachers = list(student_feats), list(teacher_feats)
        self._check(students, teachers)
        with torch.autocast(device_type=students[0].device.type, enabled=False):
            return self.loss([s.float() for s in students], [t.detach().float() for t in teachers])

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        """The method's formula on float32 maps; teachers are already detached."""
        raise NotImplementedError

    def _check(self, students: list[Tensor], teachers: list[Tensor]) -> None:
        """Raise SftkdError unless the maps match the declared taps and each other."""
        n = len(self.student_channels)
        if len(students) != n or len(teachers) != n:
            raise SftkdError(
                f"distill {self.name}: got {len(students)} student and {len(teachers)} teacher "
                f"feature maps: expected {n} of each (one per tap)"
            )
        for i, (s, t) in enumerate(zip(students, teachers)):
            where = f"distill {self.name}: pair {i}"
            if s.dim() != 4 or t.dim() != 4:
                raise SftkdError(f"{where}: shapes {tuple(s.shape)} / {tuple(t.shape)}: expected (B, C, H, W)")
            if s.shape[1] != self.student_channels[i] or t.shape[1] != self.teacher_channels[i]:
                raise SftkdError(
                    f"{where}: channels {s.shape[1]} / {t.shape[1]}: expected "
                    f"{self.student_channels[i]} / {self.teacher_channels[i]}"
                )
            if s.shape[0] != t.shape[0]:
                raise SftkdError(f"{where}: batch {s.shape[0]} / {t.shape[0]}: expected equal batch sizes")
            if self.same_size and s.shape[2:] != t.shape[2:]:
                raise SftkdError(
                    f"{where}: student {s.shape[2]}x{s.shape[3]} vs teacher {t.shape[2]}x{t.shape[3]}: "
                    "expected the same height and width"
                )


# --------------------------------------------------------------------------- methods


class NoKD(KDMethod):
    """No feature loss: the student learns from the target and, with distill.w_imit > 0, the
    teacher's output (the trainer adds those L1 terms).

    Accepts any taps, including none, and returns a constant float32 zero (no graph).
    """

    spec = CATALOG["none"]
    min_pairs = 0

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        feats = list(student_feats)
        return feats[0].new_zeros((), dtype=torch.float32) if feats else torch.zeros(())


class AttentionTransfer(KDMethod):
    """AT, Zagoruyko & Komodakis (ICLR 2017), activation-based spatial attention.

    Q(F) = mean over channels of |F|^p (p=2), flattened to (B, H*W) and L2-normalised per
    sample. Loss = mean over pairs of mean over the B*H*W entries of (Q_s - Q_t)^2.
    Channel counts may differ (the channel mean removes them); H, W must match.

    Deviations / options:
    - the paper writes beta/2 * sum_j ||Q_s - Q_t||_2; we follow the authors' code
      (squared difference, mean reduction) and average instead of summing over pairs;
      beta is the trainer's weight.
    - `normalize="batch"` reproduces the SFT-KD-Recon reference quirk: each pixel's
      attention values are L2-normalised across the batch (dim 0) instead of per sample;
      the reference also compares maps with `distance="l1"` (mean absolute difference).
      The reference sums instead of averaging over channels, which the normalisation cancels.
    """

    spec = CATALOG["at"]

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        *,
        p: float = 2.0,
        normalize: str = "sample",
        distance: str = "mse",
    ) -> None:
        super().__init__(student_channels, teacher_channels)
        self.p = _positive(self.name, "p", p)
        self.normalize = _choice(self.name, "normalize", normalize, ("sample", "batch"))
        self.distance = _choice(self.name, "distance", distance, ("mse", "l1"))

    def attention(self, f: Tensor) -> Tensor:
        """Normalised attention map (B, H*W) of a feature map (B, C, H, W)."""
        power = f.square() if self.p == 2.0 else f.abs().pow(self.p)
        q = power.mean(dim=1).flatten(1)
        return F.normalize(q, dim=1 if self.normalize == "sample" else 0)

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        terms = []
        for s, t in zip(students, teachers):
            d = self.attention(s) - self.attention(t)
            terms.append(d.square().mean() if self.distance == "mse" else d.abs().mean())
        return _mean(terms)


class FitNets(KDMethod):
    """FitNets hint loss, Romero et al. (ICLR 2015).

    Loss = mean over pairs of MSE(r(F_s), F_t) (mean over B*C*H*W), r a regressor on the
    student map. `regressor`: "auto" (identity when channel counts match, else a 1x1
    conv), "1x1", "3x3" (conv, stride 1, zero padding) or "none" (needs equal channels).

    Deviations: the regressor is linear (Romero et al. give it the hint layer's
    non-linearity) and is the identity by default when widths already match; the
    two-stage hint/guided schedule belongs to the trainer, not to this loss. The SFT-KD-Recon
    reference's "FitNets" is not this loss: on the same taps it compares AT's batch-normalised
    maps with L1 (`--method at` with {normalize: batch, distance: l1} and these taps gives it).
    """

    spec = CATALOG["fitnets"]

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        *,
        regressor: str = "auto",
    ) -> None:
        super().__init__(student_channels, teacher_channels)
        kind = _choice(self.name, "regressor", regressor, ("auto", "1x1", "3x3", "none"))
        self.regressors = nn.ModuleList(
            self._regressor(kind, cs, ct) for cs, ct in zip(self.student_channels, self.teacher_channels)
        )

    def _regressor(self, kind: str, cs: int, ct: int) -> nn.Module:
        """The student -> teacher channel map for one pair."""
        if kind == "none" or (kind == "auto" and cs == ct):
            if cs != ct:
                raise SftkdError(
                    f"{_option('regressor', 'none', self.name)}: channels {cs} / {ct} differ: "
                    "expected 'auto', '1x1' or '3x3'"
                )
            return nn.Identity()
        size = 3 if kind == "3x3" else 1
        return nn.Conv2d(cs, ct, kernel_size=size, padding=size // 2)

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        return _mean([F.mse_loss(r(s), t) for r, s, t in zip(self.regressors, students, teachers)])


class CorrelationCongruence(KDMethod):
    """CC, Peng et al. (ICCV 2019), correlation congruence between batch samples.

    Each map is global-average-pooled to (B, C), embedded (see below) and L2-normalised
    to f_i. The correlation C[i, j] is the Gaussian RBF kernel exp(-gamma ||f_i - f_j||^2)
    = exp(-2 gamma) exp(2 gamma f_i.f_j), approximated by its Taylor expansion
    sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (f_i.f_j)^p (P=`order`=2, gamma=0.4).
    Loss = mean over pairs of ||C_s - C_t||_F^2 / B^2.

    Embedding: with equal channel counts and `embed_dim=None`, the pooled vectors are used
    directly (identical maps give 0). Otherwise a linear head (with bias) per side maps
    student and teacher vectors to `embed_dim` (default max(Cs, Ct)), trained with the
    student. A 1-D vector normalises to its sign, so pooled 1-channel maps carry no
    correlation: use `embed_dim` >= 2 (or the 32-channel hidden taps) for them.

    Deviations: only the correlation-congruence term; CC's instance-congruence term is
    the logit KD of classification, whose role the trainer's imitation L1 plays here.
    Note that with learned heads on both sides this loss alone has a degenerate minimum
    (both heads collapsing); train it with a reconstruction term or equal widths. The
    SFT-KD-Recon reference uses RepDistiller's variant instead, mean over the batch of
    sum over channels of |F_s - F_t|[i] * |F_s - F_t|[i+1] on the raw maps (no kernel).
    """

    spec = CATALOG["cc"]
    same_size = False

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        *,
        embed_dim: int | None = None,
        gamma: float = 0.4,
        order: int = 2,
    ) -> None:
        super().__init__(student_channels, teacher_channels)
        if embed_dim is not None:
            embed_dim = int(_positive(self.name, "embed_dim", embed_dim, integer=True))
        self.gamma = _positive(self.name, "gamma", gamma)
        self.order = int(_non_negative(self.name, "order", order, integer=True))
        self.student_heads = nn.ModuleList()
        self.teacher_heads = nn.ModuleList()
        for cs, ct in zip(self.student_channels, self.teacher_channels):
            if embed_dim is None and cs == ct:
                self.student_heads.append(nn.Identity())
                self.teacher_heads.append(nn.Identity())
            else:
                dim = embed_dim if embed_dim is not None else max(cs, ct)
                self.student_heads.append(nn.Linear(cs, dim))
                self.teacher_heads.append(nn.Linear(ct, dim))

    def correlation(self, v: Tensor) -> Tensor:
        """Taylor-approximated RBF correlation matrix (B, B) of embedded vectors (B, D)."""
        v = F.normalize(v, dim=1)
        cos = v @ v.t()
        two_g = 2.0 * self.gamma
        result = torch.zeros_like(cos)
        for p in range(self.order + 1):
            result = result + math.exp(-two_g) * two_g**p / math.factorial(p) * cos.pow(p)
        return result

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        terms = []
        for hs, ht, s, t in zip(self.student_heads, self.teacher_heads, students, teachers):
            c_s = self.correlation(hs(s.mean(dim=(2, 3))))
            c_t = self.correlation(ht(t.mean(dim=(2, 3))))
            terms.append((c_s - c_t).square().sum() / s.shape[0] ** 2)
        return _mean(terms)


class FSP(KDMethod):
    """FSP, Yim et al. (CVPR 2017), flow of solution procedure.

    For consecutive taps k, k+1 of the same network, G = F_k^T F_{k+1} / (H*W): a
    (C_k x C_{k+1}) matrix per sample (sum over pixels of channel products). Loss = mean
    over the consecutive pairs of mean over (B, C_k, C_{k+1}) of (G_s - G_t)^2. Needs at
    least two taps; both maps of a consecutive pair must share H, W (student and teacher
    may differ in size: G does not depend on it).

    Deviations: the paper sums the squared entries and over pairs (lambda_i equal) and
    averages over samples; we also divide by C_k*C_{k+1} and the number of pairs (constant
    factors for the trainer's weight). FSP needs equal student/teacher channel counts:
    where they differ, a 1x1 conv adapter (trained with the student) maps the student's
    tap to the teacher's width before G is formed. The SFT-KD-Recon reference forms G from
    the squared 1-channel last conv outputs of cascades 1-4.
    """

    spec = CATALOG["fsp"]
    min_pairs = 2
    same_size = False

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__(student_channels, teacher_channels)
        self.adapters = nn.ModuleList(
            nn.Identity() if cs == ct else nn.Conv2d(cs, ct, kernel_size=1)
            for cs, ct in zip(self.student_channels, self.teacher_channels)
        )

    def fsp_matrix(self, a: Tensor, b: Tensor) -> Tensor:
        """FSP matrix (B, Ca, Cb) between two maps of one network with equal H, W."""
        if a.shape[2:] != b.shape[2:]:
            raise SftkdError(
                f"distill {self.name}: consecutive taps {a.shape[2]}x{a.shape[3]} and "
                f"{b.shape[2]}x{b.shape[3]}: expected the same height and width"
            )
        hw = a.shape[2] * a.shape[3]
        return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / hw

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        students = [adapter(s) for adapter, s in zip(self.adapters, students)]
        terms = []
        for k in range(len(students) - 1):
            g_s = self.fsp_matrix(students[k], students[k + 1])
            g_t = self.fsp_matrix(teachers[k], teachers[k + 1])
            terms.append((g_s - g_t).square().mean())
        return _mean(terms)


class SimilarityPreserving(KDMethod):
    """SP, Tung & Mori (ICCV 2019), similarity-preserving KD.

    A = map flattened to (B, C*H*W); G = A A^T (B x B) with each ROW L2-normalised (as in
    the paper: G~[i,:] = G[i,:] / ||G[i,:]||_2). Loss = SUM over pairs of
    ||G~_s - G~_t||_F^2 / B^2 (the paper sums over layer pairs; gamma is the trainer's
    weight). Channel counts and sizes may differ: G is B x B.
    """

    spec = CATALOG["sp"]
    same_size = False

    @staticmethod
    def similarity(f: Tensor) -> Tensor:
        """Row-normalised batch similarity (B, B) of a map (B, C, H, W)."""
        a = f.flatten(1)
        return F.normalize(a @ a.t(), dim=1)

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        terms = []
        for s, t in zip(students, teachers):
            diff = self.similarity(s) - self.similarity(t)
            terms.append(diff.square().sum() / s.shape[0] ** 2)
        return torch.stack(terms).sum()


class PKT(KDMethod):
    """PKT, Passalis & Tefas (ECCV 2018), probabilistic knowledge transfer.

    Each sample's map is flattened (`features="flat"`, C*H*W values) or global-average
    pooled (`features="pooled"`, C values) and divided by (its L2 norm + eps). The cosine
    kernel K = X X^T (B x B) is shifted to [0, 1] by (K + 1) / 2 and each row divided by
    its sum, giving conditional probabilities P (teacher) and Q (student). Loss = mean over
    pairs of (1/B) sum_i KL(P_i || Q_i), KL = sum_j P_ij log((P_ij + eps) / (Q_ij + eps)).

    Deviations: as the authors' code, the diagonal (i = j) is kept in the rows; their code
    averages over all B^2 entries, ours over the B rows (a factor B, the trainer's weight).
    """

    spec = CATALOG["pkt"]
    same_size = False

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        *,
        features: str = "flat",
        eps: float = 1e-7,
    ) -> None:
        super().__init__(student_channels, teacher_channels)
        self.features = _choice(self.name, "features", features, ("flat", "pooled"))
        self.eps = _positive(self.name, "eps", eps)

    def probabilities(self, f: Tensor) -> Tensor:
        """Row-stochastic (B, B) matrix of shifted cosine similarities between samples."""
        x = f.flatten(1) if self.features == "flat" else f.mean(dim=(2, 3))
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        k = (x @ x.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        terms = []
        for s, t in zip(students, teachers):
            p, q = self.probabilities(t), self.probabilities(s)
            kl = (p * torch.log((p + self.eps) / (q + self.eps))).sum(dim=1)
            terms.append(kl.mean())
        return _mean(terms)


class NST(KDMethod):
    """NST, Huang & Wang (2017), neuron selectivity transfer.

    Per sample, the channels of a map are a set of vectors (each channel flattened over
    H*W and L2-normalised). Loss = squared MMD between the student set (Cs vectors) and
    the teacher set (Ct vectors) with the polynomial kernel k(x, y) = (x.y)^2 (d=2, c=0):
    mean k(s, s') + mean k(t, t') - 2 mean k(s, t), averaged over samples, then over pairs.
    Channel counts may differ (MMD compares sets); H, W must match. Computed from C x C
    Gram matrices, never from (H*W)-sized kernels. Deviation: beta/2 is the trainer's weight.
    """

    spec = CATALOG["nst"]

    @staticmethod
    def _kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        """Per-sample mean of (a_i . b_j)^2 over all channel pairs: (B,)."""
        return torch.bmm(a, b.transpose(1, 2)).square().mean(dim=(1, 2))

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        terms = []
        for s, t in zip(students, teachers):
            s = F.normalize(s.flatten(2), dim=2)
            t = F.normalize(t.flatten(2), dim=2)
            mmd = self._kernel_mean(s, s) + self._kernel_mean(t, t) - 2.0 * self._kernel_mean(s, t)
            terms.append(mmd.mean())
        return _mean(terms)


class FactorTransfer(KDMethod):
    """FT, Kim et al. (NeurIPS 2018), factor transfer.

    Per pair, a paraphraser encodes the teacher map into a factor with
    f = max(1, round(rate * Ct)) channels (rate 0.5, the paper's paraphrase rate k) and a
    decoder reconstructs the map from it; a translator maps the student map to f channels.
    Encoder and translator: three 3x3 convs (C->C, C->f, f->f) each followed by
    LeakyReLU(0.1); decoder: three 3x3 convs (f->f, f->Ct, Ct->Ct), the last one linear.
    Per pair: FT = mean |n(T(F_s)) - n(P(F_t))| (p=1) with n = L2 normalisation of the
    flattened factor per sample, plus reconstruction_weight * mean (D(P(F_t)) - F_t)^2.
    Loss = mean over pairs. H, W must match.

    Deviations: canonical FT pre-trains the paraphraser on the teacher and then freezes
    it; here it trains jointly with the student through its reconstruction loss, which
    is added to the returned loss. The teacher factor enters the FT term detached, so the
    paraphraser learns only to reconstruct (as in pre-training) and the teacher maps
    (already detached) never receive gradient. No batch norm in the adapters (the DC-CNN
    has none; batches of 4 make it noisy); stride-1 convs instead of transposed convs in
    the decoder (equivalent at stride 1), whose last conv is linear (the authors' paraphraser
    ends with LeakyReLU). The FT term is a mean over entries (as the
    authors' code), not the p-norm of the paper; beta is the trainer's weight.
    """

    spec = CATALOG["ft"]

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        *,
        rate: float = 0.5,
        reconstruction_weight: float = 1.0,
    ) -> None:
        super().__init__(student_channels, teacher_channels)
        self.rate = _positive(self.name, "rate", rate)
        self.reconstruction_weight = _non_negative(self.name, "reconstruction_weight", reconstruction_weight)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.translators = nn.ModuleList()
        for cs, ct in zip(self.student_channels, self.teacher_channels):
            f = max(1, round(self.rate * ct))
            self.encoders.append(self._encoder(ct, f))
            self.translators.append(self._encoder(cs, f))
            self.decoders.append(
                nn.Sequential(_conv3x3(f, f), nn.LeakyReLU(0.1), _conv3x3(f, ct), nn.LeakyReLU(0.1), _conv3x3(ct, ct))
            )

    @staticmethod
    def _encoder(c: int, f: int) -> nn.Sequential:
        """Three 3x3 convs C->C->f->f, each followed by LeakyReLU(0.1)."""
        layers: list[nn.Module] = []
        for c_in, c_out in ((c, c), (c, f), (f, f)):
            layers += [_conv3x3(c_in, c_out), nn.LeakyReLU(0.1)]
        return nn.Sequential(*layers)

    def loss(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        terms = []
        for enc, dec, tr, s, t in zip(self.encoders, self.decoders, self.translators, students, teachers):
            factor_t = enc(t)
            reconstruction = F.mse_loss(dec(factor_t), t)
            f_s = F.normalize(tr(s).flatten(1), dim=1)
            f_t = F.normalize(factor_t.detach().flatten(1), dim=1)
            terms.append((f_s - f_t).abs().mean() + self.reconstruction_weight * reconstruction)
        return _mean(terms)


# --------------------------------------------------------------------------- registry

METHODS: dict[str, type[KDMethod]] = {
    cls.spec.name: cls
    for cls in (AttentionTransfer, FitNets, CorrelationCongruence, FSP, SimilarityPreserving, PKT, NST,
                FactorTransfer, NoKD)
}


def method_options(name: str) -> dict[str, Any]:
    """The options a method accepts, with their defaults (keyword-only `__init__` arguments)."""
    params = inspect.signature(METHODS[name].__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_method(
    name: str, student_channels: Sequence[int], teacher_channels: Sequence[int], **options: Any
) -> KDMethod:
    """Build the KD method `name` (case-insensitive) for the given tap channel counts.

    Raises SftkdError for an unknown method or option, naming the nearest valid one. Records the
    options given on the method (`KDMethod.between_samples` reads them).
    """
    key = method_spec(name).name
    allowed = method_options(key)
    for option in options:
        if option not in allowed:
            expected = f"one of {', '.join(allowed)}" if allowed else "no options"
            raise SftkdError(
                f"distill.options: unknown option {option!r} for method {key}; expected {expected}"
                f"{did_you_mean(option, allowed, quoted=True)}"
            )
    method = METHODS[key](student_channels, teacher_channels, **options).float()
    method.options = dict(options)
    return method
