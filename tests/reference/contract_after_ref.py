"""Float64 NumPy oracles the contract cases of calibration / ood / labels / dynamics need
beyond the per-paper references (no softmaxkit import).

Built on the transcriptions in ``calibration_ref``, ``correctness_ref``, ``ood_ref`` and
``collapse_ref``, plus direct minimisations with SciPy where a function fits something:

* vector and matrix scaling (Guo et al. 2017, arXiv:1706.04599, Sec. 4.2; matrix scaling
  with the ODIR penalty of Kull et al. 2019, arXiv:1910.12656, in its normalised form):
  the mean NLL (+ penalty) minimised by ``scipy.optimize.minimize`` with its gradient;
* L2-regularised binary logistic regression (scikit-learn's objective with an
  unpenalised intercept), minimised the same way, and the Mahalanobis layer ensemble
  (Lee et al. 2018, arXiv:1807.03888) built from it;
* the Mahalanobis input pre-processing step ``x - eps * sign(grad)`` for an identity
  feature map, whose gradient of the closest-class distance is ``2 P (x - mu_c)``;
* the correctness-aware calibrated logits ``z_0 / T(x)`` (Liu et al. 2024,
  arXiv:2404.13016) and its loss with the reductions, ``ignore_index`` and the
  "all right or all wrong -> weight 1" convention;
* the top-two soft label ``q e_g + (1 - q) e_h`` (Jeong & Chung 2023, arXiv:2301.00006),
  the Softmax Collapse triple (Prieto et al. 2025, arXiv:2501.04697, Eqs. 2-3) and one
  plain SGD step on the ⊥Grad gradient (Definition 7).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

from tests.reference import calibration_ref as cal
from tests.reference import collapse_ref, ood_ref, perpgrad_ref
from tests.reference import correctness_ref as ca


def _reduce(values: np.ndarray, reduction: str):
    if reduction == "mean":
        return float(np.mean(values)) if len(values) else math.nan
    if reduction == "sum":
        return float(np.sum(values))
    return values


# ------------------------------------------------------------------ calibration metrics
def probabilities(x, from_logits: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return cal.softmax(x) if from_logits else x


def brier(x, target, from_logits=True, reduction="mean"):
    return _reduce(cal.brier(probabilities(x, from_logits), np.asarray(target)), reduction)


def nll(x, target, from_logits=True, reduction="mean"):
    target = np.asarray(target)
    if from_logits:
        values = cal.nll_from_logits(np.asarray(x, dtype=np.float64), target)
    else:
        p = np.asarray(x, dtype=np.float64)
        tiny = np.finfo(np.float64).tiny
        values = np.array([-math.log(max(p[i, t], tiny)) for i, t in enumerate(target)])
    return _reduce(values, reduction)


def ece(x, target, n_bins=15, norm="l1", binning="uniform", from_logits=True):
    p = probabilities(x, from_logits)
    if len(p) == 0:
        return math.nan
    return cal.ece(p, np.asarray(target), n_bins=n_bins, norm=norm, binning=binning)


def classwise_ece(x, target, n_bins=15, norm="l1", binning="uniform", from_logits=True):
    p = probabilities(x, from_logits)
    if len(p) == 0:
        return math.nan
    return cal.classwise_ece(p, np.asarray(target), n_bins=n_bins, norm=norm, binning=binning)


def reliability(x, target, n_bins=15, binning="uniform", from_logits=True):
    """(edges, confidence, accuracy, count); uniform edges only."""
    assert binning == "uniform", "the adaptive edges are not transcribed here"
    conf, acc, count = cal.curve(probabilities(x, from_logits), np.asarray(target), n_bins)
    return np.linspace(0.0, 1.0, n_bins + 1), conf, acc, count


def histogram_fractions(x, target, n_bins=15, from_logits=True):
    """Fraction of samples per equal-width confidence bin on [0, 1] (numpy's histogram
    convention: the last bin is closed)."""
    conf, _ = cal.top_label(probabilities(x, from_logits))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = np.zeros(n_bins)
    for c in conf:
        b = n_bins - 1 if c >= 1.0 else int(np.searchsorted(edges, c, side="right") - 1)
        out[b] += 1.0 / len(conf)
    return out


# ----------------------------------------------------------------------- scaling fits
def temperature_scaled(fit_logits, target, logits, lo=1e-2, hi=1e2) -> np.ndarray:
    t = cal.grid_search_temperature(np.asarray(fit_logits), np.asarray(target), lo=lo, hi=hi)
    return np.asarray(logits, dtype=np.float64) / t


def _nll_and_grad(z: np.ndarray, target: np.ndarray):
    """Mean NLL of logits z (N, C) and its gradient with respect to z."""
    logp = cal.log_softmax(z)
    n = len(target)
    value = -logp[np.arange(n), target].mean()
    grad = np.exp(logp)
    grad[np.arange(n), target] -= 1.0
    return value, grad / n


def vector_scaling(fit_logits, target, logits) -> np.ndarray:
    """Calibrated logits ``z * w + b`` at the NLL minimiser, centred per row (the bias is
    defined up to a constant)."""
    x = np.asarray(fit_logits, dtype=np.float64)
    y = np.asarray(target)
    c = x.shape[1]

    def f(theta):
        w, b = theta[:c], theta[c:]
        value, g = _nll_and_grad(x * w + b, y)
        return value, np.concatenate([(g * x).sum(0), g.sum(0)])

    theta0 = np.concatenate([np.ones(c), np.zeros(c)])
    res = minimize(f, theta0, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
    w, b = res.x[:c], res.x[c:]
    out = np.asarray(logits, dtype=np.float64) * w + b
    return out - out.mean(axis=-1, keepdims=True)


def matrix_scaling(fit_logits, target, logits, l2=1e-2, bias_l2=1e-2) -> np.ndarray:
    """``W z + b`` at the minimiser of mean NLL + l2/(C(C-1)) sum_{j!=k} W_jk^2
    + bias_l2/C sum_j b_j^2."""
    x = np.asarray(fit_logits, dtype=np.float64)
    y = np.asarray(target)
    c = x.shape[1]
    off = 1.0 - np.eye(c)
    lam = l2 / (c * (c - 1)) if c > 1 else 0.0
    mu = bias_l2 / c

    def f(theta):
        w, b = theta[: c * c].reshape(c, c), theta[c * c :]
        value, g = _nll_and_grad(x @ w.T + b, y)
        value += lam * ((w * off) ** 2).sum() + mu * (b**2).sum()
        gw = g.T @ x + 2 * lam * w * off
        gb = g.sum(0) + 2 * mu * b
        return value, np.concatenate([gw.ravel(), gb])

    theta0 = np.concatenate([np.eye(c).ravel(), np.zeros(c)])
    res = minimize(f, theta0, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
    w, b = res.x[: c * c].reshape(c, c), res.x[c * c :]
    return np.asarray(logits, dtype=np.float64) @ w.T + b


# ------------------------------------------------------------- correctness-aware (CA)
def ca_calibrated(view_logits, w1, b1, w2, b2, top_k, t_min, t_max) -> np.ndarray:
    views = np.asarray(view_logits, dtype=np.float64)
    feats = ca.view_features(views, k=top_k)
    t = ca.temperature(feats, w1, b1, w2, b2, t_min=t_min, t_max=t_max)
    return views[:, 0] / t[:, None]


def ca_loss(logits, target, balanced=True, reduction="mean", ignore_index=-100):
    """The CA loss over (N, C) logits; rows with ``target == ignore_index`` are left out.
    When every kept row is right (or every one wrong) each kept row gets weight 1."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(target)
    kept = t != ignore_index
    losses = np.zeros(len(t))
    weights = np.zeros(len(t))
    if kept.any():
        l_kept, correct = ca.ca_terms(z[kept], t[kept])
        both = 0.0 < correct.mean() < 1.0
        w_kept = ca.ca_weights(correct) if (balanced and both) else np.ones(len(correct))
        losses[kept], weights[kept] = l_kept, w_kept
    per_sample = weights * losses
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return float(per_sample.sum())
    return float(per_sample.sum() / weights.sum()) if weights.sum() > 0 else 0.0


# ------------------------------------------------------------------------------ OOD
def logistic_regression(x, y, C=1.0):
    """argmin_w,b C sum_i log(1 + exp(-s_i (x_i . w + b))) + |w|^2 / 2, s_i = 2 y_i - 1."""
    x = np.asarray(x, dtype=np.float64)
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    scale = x.std(0) if len(x) > 1 else np.ones(x.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    xs = x / scale  # the same minimiser in v = w * scale, better conditioned

    def f(theta):
        v, b = theta[:-1], theta[-1]
        m = s * (xs @ v + b)
        value = C * np.logaddexp(0.0, -m).sum() + 0.5 * ((v / scale) ** 2).sum()
        d = -C * s / (1.0 + np.exp(m))  # d/d(xs.v + b) of the data term
        return value, np.concatenate([xs.T @ d + v / scale**2, [d.sum()]])

    res = minimize(f, np.zeros(x.shape[1] + 1), jac=True, method="BFGS", options={"gtol": 1e-11})
    return res.x[:-1] / scale, float(res.x[-1])


def mahalanobis_scores(train, labels, query, eps=0.0) -> np.ndarray:
    labels = np.asarray(labels)
    means, _, precision = ood_ref.mahalanobis_fit(train, labels, int(labels.max()) + 1, eps)
    return ood_ref.mahalanobis_score(query, means, precision)


def mahalanobis_ensemble(train, labels, val_in, val_out, query, C=1.0, eps=0.0):
    """Layers stacked on axis 0: (L, N, d) features per argument."""

    def layer_scores(feats):
        return np.stack(
            [mahalanobis_scores(train[i], labels, feats[i], eps) for i in range(len(train))], 1
        )

    s_in, s_out = layer_scores(val_in), layer_scores(val_out)
    x = np.concatenate([s_in, s_out])
    y = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    w, b = logistic_regression(x, y, C)
    return layer_scores(query) @ w + b


def mahalanobis_preprocess(train, labels, inputs, noise_magnitude) -> np.ndarray:
    """One signed-gradient step towards the closest class for the identity feature map:
    d/dx (x - mu_c)^T P (x - mu_c) = 2 P (x - mu_c); sign(0) = +1."""
    labels = np.asarray(labels)
    x = np.asarray(inputs, dtype=np.float64)
    means, _, precision = ood_ref.mahalanobis_fit(train, labels, int(labels.max()) + 1)
    closest = ood_ref.mahalanobis_class_scores(x, means, precision).argmax(1)
    out = np.empty_like(x)
    for i, row in enumerate(x):
        grad = 2.0 * precision @ (row - means[closest[i]])
        out[i] = row - noise_magnitude * np.where(grad >= 0, 1.0, -1.0)
    return out


# --------------------------------------------------------------------------- labels
def top_two_soft_labels(top1, top2, confusion, num_classes) -> np.ndarray:
    out = np.zeros((len(top1), num_classes))
    for j, (g, h, q) in enumerate(zip(top1, top2, confusion)):
        out[j, int(g)] += float(q)
        out[j, int(h)] += 1.0 - float(q)
    return out


# ------------------------------------------------------------------------- dynamics
def softmax_collapse(logits, target=None, precision="float32", ignore_index=-100):
    """(fraction, collapsed rows, fraction of exactly-zero losses among kept rows or None),
    class axis last; every row must be decided (no ``None`` from ``collapse_ref``)."""
    x = np.asarray(logits, dtype=np.float64)
    rows = x.reshape(-1, x.shape[-1])
    decided = [collapse_ref.collapsed_row(list(r), precision) for r in rows]
    assert None not in decided, "a sample row lies at the collapse threshold"
    collapsed = np.array(decided, dtype=bool)
    fraction = float(collapsed.mean()) if len(collapsed) else 0.0
    if target is None:
        return fraction, collapsed.reshape(x.shape[:-1]), None
    t = np.asarray(target).reshape(-1)
    zero = [
        collapse_ref.zero_loss_row(list(r), int(y), precision)
        for r, y in zip(rows, t)
        if y != ignore_index
    ]
    assert None not in zero
    zero_fraction = float(np.mean(zero)) if zero else 0.0
    return fraction, collapsed.reshape(x.shape[:-1]), zero_fraction


def perpgrad_sgd_step(w, g, lr=1.0, rescale=True):
    """(projected gradient, weight after one plain SGD step on it)."""
    perp = perpgrad_ref.perpendicular(w, g, rescale=rescale)
    return perp, np.asarray(w, dtype=np.float64) - lr * perp
