"""Feature-KD losses against independent numpy oracles (plain loops, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from sftkd_cli.distill import METHODS, KDMethod, build_method
from sftkd_cli.distill.catalog import CATALOG, between_samples, method_label, methods_help
from sftkd_cli.errors import SftkdError

torch.set_num_threads(1)

B, H, W = 3, 5, 5


def feats(channels: list[int], seed: int, size: tuple[int, int] = (H, W)) -> list[np.ndarray]:
    """Random float64 feature maps (B, C, H, W), one per channel count."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, c, *size)) for c in channels]


def to_torch(arrays: list[np.ndarray], grad: bool = False) -> list[torch.Tensor]:
    return [torch.tensor(a, dtype=torch.float32, requires_grad=grad) for a in arrays]


def loss_value(method: KDMethod, s: list[np.ndarray], t: list[np.ndarray]) -> float:
    with torch.no_grad():
        out = method(to_torch(s), to_torch(t))
    assert out.shape == ()
    return float(out)


def set_params(module: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Overwrite every parameter with fixed random values; return them as numpy arrays."""
    rng = np.random.default_rng(seed)
    values = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            v = rng.normal(scale=0.3, size=tuple(p.shape))
            p.copy_(torch.tensor(v))
            values[name] = v
    return values


def conv_np(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stride-1 'same' zero-padded cross-correlation, (B, Ci, H, W) -> (B, Co, H, W)."""
    out = np.zeros((x.shape[0], w.shape[0], x.shape[2], x.shape[3]))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            out[n, o] = b[o] + sum(correlate2d(x[n, i], w[o, i], mode="same") for i in range(x.shape[1]))
    return out


def leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.1 * x)


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.sum(v * v)))


# ----------------------------------------------------------------------------- oracles


def at_oracle(s: list[np.ndarray], t: list[np.ndarray], batch_norm: bool = False, l1: bool = False) -> float:
    total = 0.0
    for fs, ft in zip(s, t):
        maps = []
        for f in (fs, ft):
            q = np.zeros((B, H * W))
            for n in range(B):
                q[n] = (np.abs(f[n]) ** 2).sum(axis=0).ravel() / f.shape[1]
            if batch_norm:
                for k in range(H * W):
                    q[:, k] = unit(q[:, k])
            else:
                for n in range(B):
                    q[n] = unit(q[n])
            maps.append(q)
        d = maps[0] - maps[1]
        total += np.abs(d).mean() if l1 else (d**2).mean()
    return total / len(s)


def cc_oracle(vs: list[np.ndarray], vt: list[np.ndarray], gamma: float = 0.4, order: int = 2) -> float:
    """vs/vt: embedded (B, D) vectors per pair."""
    total = 0.0
    for a, b in zip(vs, vt):
        mats = []
        for v in (a, b):
            v = np.stack([unit(row) for row in v])
            c = np.zeros((B, B))
            for i in range(B):
                for j in range(B):
                    x = float(v[i] @ v[j])
                    terms = [(2 * gamma * x) ** p / math.factorial(p) for p in range(order + 1)]
                    c[i, j] = math.exp(-2 * gamma) * sum(terms)
            mats.append(c)
        total += ((mats[0] - mats[1]) ** 2).sum() / B**2
    return total / len(vs)


def fsp_oracle(s: list[np.ndarray], t: list[np.ndarray]) -> float:
    total = 0.0
    for k in range(len(s) - 1):
        gs, gt = [], []
        for f, g in ((s, gs), (t, gt)):
            a, b = f[k], f[k + 1]
            m = np.zeros((B, a.shape[1], b.shape[1]))
            for n in range(B):
                for i in range(a.shape[1]):
                    for j in range(b.shape[1]):
                        m[n, i, j] = sum(a[n, i, y, x] * b[n, j, y, x] for y in range(H) for x in range(W)) / (H * W)
            g.append(m)
        total += ((gs[0] - gt[0]) ** 2).mean()
    return total / (len(s) - 1)


def sp_oracle(s: list[np.ndarray], t: list[np.ndarray]) -> float:
    total = 0.0
    for fs, ft in zip(s, t):
        gs = []
        for f in (fs, ft):
            a = f.reshape(B, -1)
            g = np.array([[float(a[i] @ a[j]) for j in range(B)] for i in range(B)])
            gs.append(np.stack([unit(row) for row in g]))
        total += ((gs[0] - gs[1]) ** 2).sum() / B**2
    return total


def pkt_oracle(s: list[np.ndarray], t: list[np.ndarray], pooled: bool = False, eps: float = 1e-7) -> float:
    def probs(f: np.ndarray) -> np.ndarray:
        x = f.mean(axis=(2, 3)) if pooled else f.reshape(B, -1)
        k = np.zeros((B, B))
        for i in range(B):
            for j in range(B):
                cos = float(x[i] @ x[j]) / ((np.linalg.norm(x[i]) + eps) * (np.linalg.norm(x[j]) + eps))
                k[i, j] = (cos + 1) / 2
        return k / k.sum(axis=1, keepdims=True)

    total = 0.0
    for fs, ft in zip(s, t):
        p, q = probs(ft), probs(fs)
        kl = [sum(p[i, j] * math.log((p[i, j] + eps) / (q[i, j] + eps)) for j in range(B)) for i in range(B)]
        total += float(np.mean(kl))
    return total / len(s)


def nst_oracle(s: list[np.ndarray], t: list[np.ndarray]) -> float:
    def k(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y) ** 2

    total = 0.0
    for fs, ft in zip(s, t):
        per_sample = []
        for n in range(B):
            xs = [unit(fs[n, c].ravel()) for c in range(fs.shape[1])]
            xt = [unit(ft[n, c].ravel()) for c in range(ft.shape[1])]
            mmd = (
                np.mean([k(a, b) for a in xs for b in xs])
                + np.mean([k(a, b) for a in xt for b in xt])
                - 2 * np.mean([k(a, b) for a in xs for b in xt])
            )
            per_sample.append(mmd)
        total += float(np.mean(per_sample))
    return total / len(s)


# ----------------------------------------------------------------------------- values


def test_registry_and_default_taps() -> None:
    assert set(METHODS) == {"at", "fitnets", "cc", "fsp", "sp", "pkt", "nst", "ft", "none"}
    assert all(METHODS[n].name == n for n in METHODS)


def test_catalog_describes_every_method_once() -> None:
    """Each loss class is its catalog entry's, in catalog order; labels and taps come from there."""
    assert list(METHODS) == list(CATALOG)
    assert all(METHODS[n].spec is CATALOG[n] for n in METHODS)
    assert [method_label(n) for n in ("at", "FITNETS", "fitnet", "sp", "unknown")] == ["AT", "Fitnets", "Fitnets", "SP", "unknown"]
    assert methods_help() == ("at, fitnets, cc, fsp, sp, pkt, nst, ft, or none (no feature loss: output imitation with "
                              "distill.w_imit > 0, else plain L1).")


def test_at_hand_value() -> None:
    s = [np.array([[[[1.0, 0.0]]]])]
    t = [np.array([[[[0.0, 1.0]]]])]
    method = build_method("at", [1], [1])
    with torch.no_grad():
        value = method(to_torch(s), to_torch(t))
    assert float(value) == pytest.approx(1.0)  # Q_s=[1,0], Q_t=[0,1]: mean of (1, 1)


@pytest.mark.parametrize("tc", [[4, 4], [6, 2]])
@pytest.mark.parametrize("normalize,distance", [("sample", "mse"), ("batch", "l1"), ("batch", "mse")])
def test_at_matches_oracle(tc: list[int], normalize: str, distance: str) -> None:
    s, t = feats([4, 4], 1), feats(tc, 2)
    method = build_method("at", [4, 4], tc, normalize=normalize, distance=distance)
    expected = at_oracle(s, t, batch_norm=normalize == "batch", l1=distance == "l1")
    assert loss_value(method, s, t) == pytest.approx(expected, rel=1e-4)


def test_fitnets_identity_when_channels_match() -> None:
    s, t = feats([4, 4], 3), feats([4, 4], 4)
    method = build_method("fitnets", [4, 4], [4, 4])
    assert list(method.parameters()) == []
    expected = np.mean([((a - b) ** 2).mean() for a, b in zip(s, t)])
    assert loss_value(method, s, t) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("regressor", ["auto", "1x1", "3x3"])
def test_fitnets_regressor_matches_oracle(regressor: str) -> None:
    s, t = feats([4, 3], 5), feats([6, 1], 6)
    method = build_method("fitnets", [4, 3], [6, 1], regressor=regressor)
    params = set_params(method, 7)
    expected = 0.0
    for k in range(2):
        w, b = params[f"regressors.{k}.weight"], params[f"regressors.{k}.bias"]
        expected += ((conv_np(s[k], w, b) - t[k]) ** 2).mean() / 2
    assert loss_value(method, s, t) == pytest.approx(expected, rel=1e-4)


def test_cc_pooled_vectors_match_oracle() -> None:
    s, t = feats([4, 4], 8), feats([4, 4], 9)
    method = build_method("cc", [4, 4], [4, 4])
    pooled = lambda f: np.array([[f[n, c].mean() for c in range(f.shape[1])] for n in range(B)])  # noqa: E731
    expected = cc_oracle([pooled(f) for f in s], [pooled(f) for f in t])
    assert loss_value(method, s, t) == pytest.approx(expected, rel=1e-4)


def test_cc_embedding_heads_match_oracle() -> None:
    s, t = feats([4, 3], 10), feats([6, 2], 11)
    method = build_method("cc", [4, 3], [6, 2], embed_dim=3, gamma=0.3, order=3)
    params = set_params(method, 12)
    vs, vt = [], []
    for k in range(2):
        for f, side, out in ((s[k], "student", vs), (t[k], "teacher", vt)):
            w, b = params[f"{side}_heads.{k}.weight"], params[f"{side}_heads.{k}.bias"]
            pooled = f.reshape(B, f.shape[1], -1).mean(axis=2)
            emb = np.zeros((B, 3))
            for n in range(B):
                for d in range(3):
                    emb[n, d] = b[d] + sum(w[d, c] * pooled[n, c] for c in range(f.shape[1]))
            out.append(emb)
    assert loss_value(method, s, t) == pytest.approx(cc_oracle(vs, vt, gamma=0.3, order=3), rel=1e-4)


def test_cc_high_order_approaches_exact_rbf() -> None:
    """The Taylor series converges to exp(-gamma ||f_i - f_j||^2) of unit vectors."""
    s, t = feats([4], 13), feats([4], 14)
    method = build_method("cc", [4], [4], order=25)
    exact = 0.0
    mats = []
    for f in (s[0], t[0]):
        v = np.stack([unit(f[n].mean(axis=(1, 2))) for n in range(B)])
        mats.append(np.exp(-0.4 * ((v[:, None, :] - v[None, :, :]) ** 2).sum(-1)))
    exact = ((mats[0] - mats[1]) ** 2).sum() / B**2
    assert loss_value(method, s, t) == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("sc,tc", [([3, 2, 3], [3, 2, 3]), ([3, 2, 3], [3, 5, 1])])
def test_fsp_matches_oracle(sc: list[int], tc: list[int]) -> None:
    s, t = feats(sc, 15), feats(tc, 16)
    method = build_method("fsp", sc, tc)
    params = set_params(method, 17)
    adapted = [
        conv_np(f, params[f"adapters.{k}.weight"], params[f"adapters.{k}.bias"]) if f"adapters.{k}.weight" in params else f
        for k, f in enumerate(s)
    ]
    assert (len(params) > 0) == (sc != tc)
    assert loss_value(method, s, t) == pytest.approx(fsp_oracle(adapted, t), rel=1e-4)


@pytest.mark.parametrize("tc", [[4, 4], [2, 7]])
def test_sp_matches_oracle(tc: list[int]) -> None:
    s, t = feats([4, 4], 18), feats(tc, 19)
    assert loss_value(build_method("sp", [4, 4], tc), s, t) == pytest.approx(sp_oracle(s, t), rel=1e-4)


@pytest.mark.parametrize("features", ["flat", "pooled"])
@pytest.mark.parametrize("tc", [[4, 4], [2, 7]])
def test_pkt_matches_oracle(features: str, tc: list[int]) -> None:
    s, t = feats([4, 4], 20), feats(tc, 21)
    method = build_method("pkt", [4, 4], tc, features=features)
    expected = pkt_oracle(s, t, pooled=features == "pooled")
    assert loss_value(method, s, t) == pytest.approx(expected, rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("tc", [[4, 4], [2, 7]])
def test_nst_matches_oracle(tc: list[int]) -> None:
    s, t = feats([4, 4], 22), feats(tc, 23)
    assert loss_value(build_method("nst", [4, 4], tc), s, t) == pytest.approx(nst_oracle(s, t), rel=1e-4)


@pytest.mark.parametrize("sc,tc", [([4, 4], [4, 4]), ([4, 3], [6, 1])])
def test_ft_matches_oracle(sc: list[int], tc: list[int]) -> None:
    s, t = feats(sc, 24), feats(tc, 25)
    method = build_method("ft", sc, tc, rate=0.5, reconstruction_weight=0.7)
    params = set_params(method, 26)

    def run(x: np.ndarray, prefix: str, linear_last: bool) -> np.ndarray:
        for layer in range(3):
            x = conv_np(x, params[f"{prefix}.{2 * layer}.weight"], params[f"{prefix}.{2 * layer}.bias"])
            if not (linear_last and layer == 2):
                x = leaky(x)
        return x

    expected = 0.0
    for k in range(len(sc)):
        factor_t = run(t[k], f"encoders.{k}", False)
        assert factor_t.shape[1] == max(1, round(0.5 * tc[k]))
        factor_s = run(s[k], f"translators.{k}", False)
        recon = run(factor_t, f"decoders.{k}", True)
        ft_term = np.mean([np.abs(unit(factor_s[n].ravel()) - unit(factor_t[n].ravel())).mean() for n in range(B)])
        expected += (ft_term + 0.7 * ((recon - t[k]) ** 2).mean()) / len(sc)
    assert loss_value(method, s, t) == pytest.approx(expected, rel=1e-4)


def test_ft_teacher_factor_is_detached_in_the_ft_term() -> None:
    """The paraphraser learns only from its reconstruction: without it, no gradient reaches the
    encoders (the FT term sees the teacher factor detached), while the translators get one."""
    s, t = to_torch(feats([4, 4], 29), grad=True), to_torch(feats([4, 4], 30))
    method = build_method("ft", [4, 4], [4, 4], reconstruction_weight=0.0)
    method(s, t).backward()
    assert all(p.grad is None or not p.grad.any() for p in method.encoders.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.translators.parameters())


def test_none_is_zero() -> None:
    s, t = to_torch(feats([4], 27)), to_torch(feats([1], 28))
    assert float(build_method("none", [4], [1])(s, t)) == 0.0
    assert float(build_method("none", [], [])([], [])) == 0.0


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    "name,options",
    [("at", {}), ("at", {"normalize": "batch"}), ("fitnets", {}), ("cc", {}), ("fsp", {}),
     ("sp", {}), ("pkt", {}), ("pkt", {"features": "pooled"}), ("nst", {})],
)
def test_identical_features_give_zero(name: str, options: dict) -> None:
    s = feats([4, 3], 29)
    method = build_method(name, [4, 3], [4, 3], **options)
    assert loss_value(method, s, [a.copy() for a in s]) == pytest.approx(0.0, abs=1e-6)


def test_cc_shared_heads_give_zero() -> None:
    s = feats([4], 30)
    method = build_method("cc", [4], [4], embed_dim=2)
    method.teacher_heads.load_state_dict(method.student_heads.state_dict())
    assert loss_value(method, s, [a.copy() for a in s]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n].min_pairs > 0])
def test_gradients_reach_student_and_adapters_not_teacher(name: str) -> None:
    sc, tc = [4, 3, 4], [6, 1, 4]
    s, t = to_torch(feats(sc, 31), grad=True), to_torch(feats(tc, 32), grad=True)
    method = build_method(name, sc, tc)
    method(s, t).backward()
    for x in s:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for x in t:
        assert x.grad is None or not x.grad.any()
    params = list(method.named_parameters())
    assert (len(params) > 0) == (name in ("fitnets", "cc", "fsp", "ft"))
    for pname, p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_teacher_graph_not_needed() -> None:
    """Teacher maps produced under no_grad (no graph) work for every method."""
    s = to_torch(feats([4, 4], 33), grad=True)
    with torch.no_grad():
        t = [x * 2.0 for x in to_torch(feats([4, 4], 34), grad=True)]
    for name in METHODS:
        if name == "none":
            continue  # a constant zero, no graph
        build_method(name, [4, 4], [4, 4])(s, t).backward()


def test_autocast_computes_in_float32() -> None:
    s, t = feats([4, 4], 35), feats([4, 4], 36)
    method = build_method("sp", [4, 4], [4, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = method(to_torch(s), to_torch(t))
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(sp_oracle(s, t), rel=1e-4)


# ----------------------------------------------------------------------------- errors


def test_unknown_method_suggests_nearest() -> None:
    with pytest.raises(SftkdError, match="did you mean 'fitnets'"):
        build_method("fitnet", [4], [4])
    assert build_method("AT", [4], [4]).name == "at"


def test_unknown_option_is_named() -> None:
    with pytest.raises(SftkdError, match="'normalise'.*did you mean 'normalize'"):
        build_method("at", [4], [4], normalise="batch")
    with pytest.raises(SftkdError, match="'p'.*expected no options"):
        build_method("sp", [4], [4], p=2)


@pytest.mark.parametrize(
    "name,options",
    [("at", {"normalize": "pixel"}), ("at", {"p": 0}), ("cc", {"embed_dim": 0}), ("cc", {"gamma": "x"}),
     ("pkt", {"features": "mean"}), ("ft", {"rate": -1}), ("fitnets", {"regressor": "5x5"})],
)
def test_bad_option_values(name: str, options: dict) -> None:
    with pytest.raises(SftkdError, match=rf"^distill\.options\.{next(iter(options))} .* \(method {name}\): expected"):
        build_method(name, [4], [4], **options)


def test_structural_errors() -> None:
    with pytest.raises(SftkdError, match="expected the same number"):
        build_method("at", [4, 4], [4])
    with pytest.raises(SftkdError, match="expected at least 2"):
        build_method("fsp", [4], [4])
    with pytest.raises(SftkdError, match="expected 'auto', '1x1' or '3x3'"):
        build_method("fitnets", [4], [2], regressor="none")
    method = build_method("at", [4], [4])
    with pytest.raises(SftkdError, match="expected 4 / 4"):
        method(to_torch(feats([3], 37)), to_torch(feats([4], 38)))
    with pytest.raises(SftkdError, match="expected the same height and width"):
        method(to_torch(feats([4], 39)), to_torch(feats([4], 40, size=(4, 4))))
    with pytest.raises(SftkdError, match="expected 1 of each"):
        method(to_torch(feats([4, 4], 41)), to_torch(feats([4, 4], 42)))


def test_methods_relating_samples_give_zero_on_one_slice_and_are_marked() -> None:
    """Why distill refuses train.batch_size 1 for them: CC, SP and PKT compare the slices of a
    batch (B x B matrices), so with B = 1 their loss is exactly 0 whatever the features."""
    rng = np.random.default_rng(40)
    s, t = [rng.normal(size=(1, 4, H, W))], [rng.normal(size=(1, 4, H, W)) * 5 + 3]
    for name in ("cc", "sp", "pkt"):
        assert CATALOG[name].between_samples
        assert loss_value(build_method(name, [4], [4]), s, t) == 0.0
    for name in ("at", "fitnets", "nst"):  # per-sample losses: not marked, and not 0 on one slice
        assert not CATALOG[name].between_samples
        assert loss_value(build_method(name, [4], [4]), s, t) > 0.0


def test_batch_normalised_at_gives_zero_on_one_slice_and_is_marked_with_its_options() -> None:
    """AT's normalize batch L2-normalises each pixel across the batch: with B = 1 both maps are
    all ones and the loss is exactly 0, so `between_samples` sees the options, not the method alone."""
    rng = np.random.default_rng(41)
    s, t = [rng.normal(size=(1, 4, H, W))], [rng.normal(size=(1, 4, H, W)) * 5 + 3]
    at_batch = build_method("at", [4], [4], normalize="batch", distance="l1")
    assert loss_value(at_batch, s, t) == 0.0
    assert at_batch.between_samples().startswith("AT with distill.options.normalize batch normalises")
    assert between_samples("at", {"normalize": "batch"}) == at_batch.between_samples()
    for options in ({}, {"normalize": "sample"}, {"distance": "l1"}):  # per-slice: not marked
        assert between_samples("at", options) == build_method("at", [4], [4], **options).between_samples() == ""
    assert between_samples("sp", {}) == "SP compares the slices of a batch with each other"
