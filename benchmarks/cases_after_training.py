"""Benchmark cases for calibration and OOD scoring against the libraries users know.

The peers (torchmetrics, netcal, pytorch-ood) are installed only in the benchmark
environment; a case whose peer is missing is skipped with a note. pytorch-ood imports
torchvision, which does not load beside the torch 2.13 CPU build on this machine, so these
cases were run in a separate environment with torch 2.9.1 + torchvision 0.24.1 (the JSON
records the versions). Shapes are the issue's; ``--quick`` divides N by 100 (Mahalanobis:
2000 x 64, 10 classes).

* ``expected_calibration_error`` on 10^6 x 1000 float32 logits against torchmetrics'
  ``multiclass_calibration_error`` (15 uniform bins, l1), both from logits. Equal values:
  torchmetrics bins a confidence of exactly 1.0 into an extra bin, ours into the last one,
  which never happens at these logits.
* ``TemperatureScaling.fit`` on 10^5 x 1000 logits (targets drawn from softmax(z / 2), so
  T is about 2) against netcal's ``TemperatureScaling`` (method "mle", scipy) on the
  softmax probabilities; netcal's ``temperature`` attribute is the inverse temperature
  (the weight multiplying the log-probabilities), so the baseline returns its inverse.
* ``Mahalanobis`` fit + score (20000 training features, d = 256, 100 classes, 20000 test
  features) against pytorch-ood's ``Mahalanobis.fit_features`` + ``predict_features``.
  pytorch-ood scores 0.5 * min_c (f - mu_c)^T S^-1 (f - mu_c) with S the *unnormalised*
  scatter matrix (+ 1e-6 I) and the opposite sign; ours is Lee et al.'s
  max_c -(f - mu_c)^T Sigma^-1 (f - mu_c) with Sigma = S / N, so the baseline's score is
  mapped by * (-2 N) before comparing. pytorch-ood accumulates the scatter matrix and
  inverts it in float32: against a float64 computation its scores are off by 0.033 (9e-5
  relative, scores ~ -170 to -360), ours by 0.0022; hence atol 0.05.
"""

from __future__ import annotations

import torch

from softmaxkit.calibration import TemperatureScaling, expected_calibration_error
from softmaxkit.cli.bench import Case
from softmaxkit.ood import Mahalanobis


def _ece_setup(quick: bool):
    n = 10**6 // (100 if quick else 1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 1000, generator=g) * 2
    return logits, torch.randint(0, 1000, (n,), generator=g)


def torchmetrics_ece(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.classification import multiclass_calibration_error

    return multiclass_calibration_error(logits, target, 1000, n_bins=15, norm="l1")


def _ts_setup(quick: bool):
    n = 10**5 // (100 if quick else 1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 1000, generator=g) * 3
    target = torch.multinomial((logits / 2).softmax(1), 1, generator=g).squeeze(1)
    probs = logits.double().softmax(1).numpy()
    return logits, target, probs, target.numpy()


def fit_temperature(logits, target, probs, target_np) -> torch.Tensor:
    return TemperatureScaling().fit(logits, target).temperature.detach().double()


def netcal_temperature(logits, target, probs, target_np) -> torch.Tensor:
    from netcal.scaling import TemperatureScaling as NetcalTemperatureScaling

    scaler = NetcalTemperatureScaling(method="mle")
    scaler.fit(probs, target_np)
    return 1.0 / torch.as_tensor(scaler.temperature, dtype=torch.float64).reshape(())


def _maha_setup(quick: bool):
    n, d, c = (2000, 64, 10) if quick else (20000, 256, 100)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(c, d, generator=g) * 2
    mix = torch.randn(d, d, generator=g) / d**0.5
    target = torch.randint(0, c, (n,), generator=g)
    train = means[target] + torch.randn(n, d, generator=g) @ mix
    test = means[torch.randint(0, c, (n,), generator=g)] + torch.randn(n, d, generator=g) @ mix
    return train, target, test


def mahalanobis(train, target, test) -> torch.Tensor:
    return Mahalanobis().fit(train, target).score(test)


def pytorch_ood_mahalanobis(train, target, test) -> torch.Tensor:
    from pytorch_ood.detector import Mahalanobis as OODMahalanobis

    detector = OODMahalanobis(None).fit_features(train, target)
    return detector.predict_features(test) * (-2 * train.shape[0])


CASES = [
    Case(
        name="expected_calibration_error/1000000x1000",
        setup=_ece_setup,
        ours=expected_calibration_error,
        baseline=torchmetrics_ece,
        baseline_name="torchmetrics multiclass_calibration_error",
        backward=False,
        targets={"time_fwd": 1.0},
        atol=1e-5,
        requires=("torchmetrics",),
    ),
    Case(
        name="TemperatureScaling.fit/100000x1000",
        setup=_ts_setup,
        ours=fit_temperature,
        baseline=netcal_temperature,
        baseline_name="netcal TemperatureScaling(mle).fit",
        backward=False,
        targets={"time_fwd": 1.0},
        atol=1e-3,
        requires=("netcal",),
    ),
    Case(
        name="Mahalanobis.fit+score/20000x256,C=100",
        setup=_maha_setup,
        ours=mahalanobis,
        baseline=pytorch_ood_mahalanobis,
        baseline_name="pytorch-ood Mahalanobis fit_features + predict_features",
        backward=False,
        targets={"time_fwd": 1.0},
        atol=5e-2,
        requires=("pytorch_ood",),
    ),
]
