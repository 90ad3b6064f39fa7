"""The numbers of ``softmaxkit report``: calibration, Softmax Collapse and OOD scores.

:func:`analyse` turns the input (and OOD) data into the JSON-ready report dict and the
arrays its plots are drawn from: metrics on all rows; the seeded fit / evaluation split;
temperature, vector and matrix scaling fitted on one half and judged on the other; every
score of :data:`~softmaxkit.cli.report_scores.OOD_SCORES` with its AUROC, AUPR-in,
AUPR-out and FPR at 95% TPR.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from softmaxkit import ood as O
from softmaxkit.cli.report_inputs import Data, check_ood
from softmaxkit.cli.report_scores import OOD_SCORES, ScoreInputs, default_knn_k

DEFAULT_N_BINS = 15
SPLIT_NOTE = (
    "The scaling methods are fitted (NLL) on one half of the input, chosen by a permutation "
    "seeded with --seed {seed} ({n_fit} rows), and every calibration metric, plot and "
    "OOD score is evaluated on the other half ({n_eval} rows)."
)


class PlotInputs(NamedTuple):
    """What the plots are drawn from: the evaluation half's logits and labels, its
    temperature-scaled logits, the bins, and the raw OOD scores (name -> (in, out))."""

    z_eval: torch.Tensor
    y_eval: torch.Tensor
    z_temp: torch.Tensor
    n_bins: int
    ood_raw: dict[str, tuple[torch.Tensor, torch.Tensor]] | None


def split_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into a fit half (n // 2 rows) and an eval half, sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, evaluate = order[: n // 2], order[n // 2 :]
    return fit.sort().values, evaluate.sort().values


def calibration_metrics(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> dict[str, float]:
    """Accuracy, NLL, Brier and the ECE family of ``logits`` (the report's metric set)."""
    from softmaxkit import calibration as C

    def ece(**kw: Any) -> float:
        return C.expected_calibration_error(logits, labels, n_bins=n_bins, **kw).item()

    with torch.no_grad():
        return {
            "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "nll": C.negative_log_likelihood(logits, labels).item(),
            "brier": C.brier_score(logits, labels).item(),
            "ece_l1_uniform": ece(norm="l1", binning="uniform"),
            "ece_l1_adaptive": ece(norm="l1", binning="adaptive"),
            "ece_l2": ece(norm="l2", binning="uniform"),
            "ece_max": ece(norm="max", binning="uniform"),
            "classwise_ece": C.classwise_calibration_error(logits, labels, n_bins=n_bins).item(),
        }


def _parameters(module: nn.Module) -> dict[str, Any]:
    """The fitted values of a scaler's state dict (its floating entries) as lists."""
    return {
        k: v.detach().to(torch.float64).tolist()
        for k, v in module.state_dict().items()
        if v.is_floating_point()
    }


def _fit_info(module: nn.Module) -> dict[str, Any]:
    """The scaler's fit diagnostics (``fit_info``: method, iterations, NLL), JSON-ready."""
    info = getattr(module, "fit_info", None)
    if not isinstance(info, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[str(key)] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def fit_scalers(
    fit_logits: torch.Tensor, fit_labels: torch.Tensor
) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """Temperature, vector and matrix scaling fitted on ``fit_logits``; with their parameters."""
    from softmaxkit import calibration as C

    num_classes = fit_logits.shape[1]
    fitted: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for name, module in (
        ("temperature", C.TemperatureScaling()),
        ("vector", C.VectorScaling(num_classes)),
        ("matrix", C.MatrixScaling(num_classes)),
    ):
        module.fit(fit_logits, fit_labels)
        fitted[name] = (module, _parameters(module))  # temperature: {"temperature": T}
    return fitted


def ood_scores(
    data: Data,
    ood: Data,
    fit: torch.Tensor,
    evaluate: torch.Tensor,
    knn_k: int | None = None,
) -> dict[str, Any]:
    """Every score of the registry on the eval half (in) and on the OOD data (out), with
    its metrics; feature scores need features on both sides."""
    z_in, z_out = data.logits[evaluate], ood.logits
    inputs = ScoreInputs(logits_in=z_in, logits_out=z_out)
    skipped: dict[str, str] = {}
    k = None
    if data.features is not None and ood.features is not None:
        f_fit = data.features[fit]
        assert data.labels is not None
        k = min(default_knn_k(len(f_fit)) if knn_k is None else knn_k, len(f_fit))
        inputs = ScoreInputs(
            logits_in=z_in,
            logits_out=z_out,
            features_fit=f_fit,
            labels_fit=data.labels[fit],
            features_in=data.features[evaluate],
            features_out=ood.features,
            knn_k=k,
        )
    no_features = "no features in the input" if data.features is None else "no OOD features"
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    notes: dict[str, list[str]] = {}
    for name, score in OOD_SCORES.items():
        if score.needs_features and inputs.features_fit is None:
            skipped[name] = no_features
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scores[name] = score.compute(inputs)
        except ValueError as exc:  # a feature score that cannot be fitted on the fit half
            if not score.needs_features:
                raise
            skipped[name] = str(exc).splitlines()[0]
        if caught:  # e.g. a singular covariance: in the report, not on the terminal
            notes[name] = list(dict.fromkeys(str(w.message) for w in caught))
    table = {}
    with torch.no_grad():
        for name, (s_in, s_out) in scores.items():
            s_in, s_out = s_in.detach(), s_out.detach()
            table[name] = {
                "auroc": O.auroc(s_in, s_out).item(),
                "aupr_in": O.aupr_in(s_in, s_out).item(),
                "aupr_out": O.aupr_out(s_in, s_out).item(),
                "fpr_at_95_tpr": O.fpr_at_tpr(s_in, s_out, tpr=0.95).item(),
            }
    return {
        "n_in": len(evaluate),
        "n_out": len(z_out),
        "in_distribution": "the evaluation half of the input",
        "convention": "Higher score = more in-distribution; positives = in-distribution",
        "knn_k": k,
        "scores": table,
        "skipped": skipped,
        "warnings": notes,
        "_raw": {name: (s[0].detach(), s[1].detach()) for name, s in scores.items()},
    }


def analyse(
    data: Data, ood: Data | None, *, n_bins: int, seed: int, knn_k: int | None
) -> tuple[dict[str, Any], PlotInputs]:
    """All numbers of the report (a JSON-ready dict) and what its plots are drawn from."""
    from softmaxkit import __version__
    from softmaxkit.dynamics import softmax_collapse_fraction

    assert data.labels is not None
    n, c = data.logits.shape
    fit, evaluate = split_halves(n, seed)
    z_fit, y_fit = data.logits[fit], data.labels[fit]
    z_eval, y_eval = data.logits[evaluate], data.labels[evaluate]

    fitted = fit_scalers(z_fit, y_fit)
    methods: dict[str, Any] = {
        "uncalibrated": {"metrics": calibration_metrics(z_eval, y_eval, n_bins)}
    }
    calibrated: dict[str, torch.Tensor] = {}
    for name, (module, params) in fitted.items():
        with torch.no_grad():
            calibrated[name] = module(z_eval).detach()
        methods[name] = {
            "metrics": calibration_metrics(calibrated[name], y_eval, n_bins),
            "parameters": params,
            "fit_info": _fit_info(module),
            "module": repr(module),
        }

    report: dict[str, Any] = {
        "softmaxkit_version": __version__,
        "input": {
            "source": data.source,
            "n": n,
            "num_classes": c,
            "feature_dim": None if data.features is None else data.features.shape[1],
            "ood_source": None if ood is None else ood.source,
            "n_ood": None if ood is None else len(ood.logits),
        },
        "settings": {"n_bins": n_bins, "seed": seed},
        "overall": calibration_metrics(data.logits, data.labels, n_bins),
        "softmax_collapse": {
            "fraction": softmax_collapse_fraction(data.logits, dtype=torch.float32).item(),
            "dtype": "float32",
            "definition": "fraction of rows whose float32 softmax is exactly one-hot "
            "(sum_j exp(z_j - max z) == 1), Prieto et al. 2025, arXiv:2501.04697",
        },
        "calibration": {
            "n_fit": len(fit),
            "n_eval": len(evaluate),
            "split": SPLIT_NOTE.format(seed=seed, n_fit=len(fit), n_eval=len(evaluate)),
            "ece_definitions": "with gap_b = |accuracy - confidence| in bin b and w_b its "
            "share of the rows: l1 = sum_b w_b gap_b, l2 = sqrt(sum_b w_b gap_b^2), max = "
            f"max_b gap_b (non-empty bins); uniform: {n_bins} equal-width confidence bins, "
            f"adaptive: {n_bins} equal-mass bins; classwise: the mean over classes k of the "
            "l1 ECE of p_k against 1[y = k] (uniform bins)",
            "methods": methods,
        },
        "ood": None,
    }
    raw_scores = None
    if ood is not None:
        check_ood(data, ood)
        ood_part = ood_scores(data, ood, fit, evaluate, knn_k)
        raw_scores = ood_part.pop("_raw")
        report["ood"] = ood_part
    return report, PlotInputs(z_eval, y_eval, calibrated["temperature"], n_bins, raw_scores)
