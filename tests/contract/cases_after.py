"""Contract cases of the packages after the maps and losses: ``softmaxkit.calibration``,
``softmaxkit.ood``, ``softmaxkit.labels`` and ``softmaxkit.dynamics``.

Classes are registered through a small ``op`` that builds the object, fits it where it
needs fitting and calls its main method; the oracles are the float64 transcriptions of
``tests/reference/`` (``calibration_ref``, ``correctness_ref``, ``transforms_ref``,
``ood_ref``, ``labels_ref``, ``collapse_ref``, ``perpgrad_ref``) and, for what those do
not cover (the scaling fits, the logistic regression, the ensemble, ...),
``contract_after_ref``. A module-level constant (``POSSIBILITY_METHODS``, ``METHODS``,
``NOISE_MAGNITUDES``) is registered as a case with one sample per value it lists, each
checked against the reference of that value.

Metrics, fits and EM algorithms are evaluation code with data-dependent Python control
flow; only a few cheap differentiable functions per package are compiled (the compile
test compiles every compiled case of a package in one function).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from softmaxkit import calibration as C
from softmaxkit import dynamics as D
from softmaxkit import labels as LB
from softmaxkit import ood as O
from tests.contract.inputs import labels, np64, probs, rand, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import contract_after_ref as after_ref
from tests.reference import correctness_ref, labels_ref, ood_ref, transforms_ref
from tests.reference import perpgrad_ref as pg

NOT_COMPILED = (
    "not compiled: evaluation code with data-dependent Python control flow (validation "
    "reads, bins, iterative fits); one differentiable function per package is compiled"
)
FIT_NOT_COMPILED = "not compiled: builds and fits an object (an iterative solver) per call"
# one compiled function per package bounds the suite's compile time (5-15 s each on 2 cores)
COMPILED_BY = "compile time: {} is this package's compiled function (same checks and upcast)"
METRIC_NO_GRAD = "an evaluation metric: detached and not differentiable by contract"
FIT_NO_GRAD = "the fit is detached (no gradient flows through a fit)"
INT_INPUT = "integer annotations: nothing to differentiate"
CONTAINER = "result container: built and checked field by field through {}"


def ints(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def container(name: str, source: Case, main, samples=None, reference=None) -> Case:
    """A NamedTuple of results, registered through the function that returns it; only
    ``reference`` runs, when the container has samples of its own (e.g. an optional field
    left ``None``)."""
    reason = CONTAINER.format(source.name)
    tests = ("dtypes", "reductions", "ignore_index", "prob_targets")
    tests += ("noncontiguous", "dim", "empty", "compile", "gradcheck", "bad")
    tests += () if reference is not None else ("reference",)
    return Case(
        name=name,
        op=source.op,
        samples=samples or source.samples,
        reference=reference,
        no_reference="" if reference is not None else "result container",
        dtypes=source.dtypes,
        compile=False,
        gradcheck=False,
        main=main,
        keeps_dtype=source.keeps_dtype,
        skip={test: reason for test in tests},
    )


# ============================================================================ calibration
# ---------------------------------------------------------------------------- metrics
def grid_probs(n: int, c: int, seed: int, steps: int = 32) -> torch.Tensor:
    """Rows of multiples of 1/steps summing to 1 exactly, with a unique maximum: exact in
    every dtype, so a half-precision sample is also a valid float64 probability input
    (rows of rounded softmax outputs are off by more than the float64 tolerance)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < n:
        cuts = torch.randint(steps + 1, (c - 1,), generator=g).sort().values
        counts = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([steps])]))
        if int((counts == counts.max()).sum()) == 1:
            rows.append(counts.to(torch.float64) / steps)
    return torch.stack(rows)


def metric_samples(extra: tuple[dict, ...]):
    """Logits (24, 4) and probabilities (16, 3), each with the extra keyword sets."""

    def samples(dtype):
        x = randn(24, 4, dtype=dtype, seed=10, scale=2.0)
        y = labels(24, classes=4, seed=11)
        p = grid_probs(16, 3, seed=12).to(dtype)
        yp = labels(16, classes=3, seed=13)
        out = [Sample((x, y)), Sample((p, yp), {"from_logits": False})]
        out += [Sample((x, y), dict(kw)) for kw in extra]
        return out

    return samples


def empty_metric(**kwargs):
    return lambda: Sample((randn(0, 4), labels(0, classes=4)), kwargs)


BAD_METRIC = [
    Bad({}, TypeError, "input", args={0: torch.zeros(24, 4, dtype=torch.long)}),
    Bad({}, ValueError, "input", args={0: randn(24)}),
    Bad({}, ValueError, "target", args={1: labels(23, classes=4)}),
    Bad({}, ValueError, "target", args={1: labels(24, classes=4) + 4}),
    Bad({"from_logits": 1}, TypeError, "from_logits"),
]
BAD_BINS = [
    Bad({"n_bins": 0}, ValueError, "n_bins"),
    Bad({"binning": "quantile"}, ValueError, "binning"),
]


def metric_case(name, op, reference, extra, **fields) -> Case:
    fields.setdefault("skip", {})
    fields["skip"] = {"compile": NOT_COMPILED, "gradcheck": METRIC_NO_GRAD, **fields["skip"]}
    return Case(
        name=f"softmaxkit.calibration.{name}",
        op=op,
        samples=metric_samples(extra),
        reference=lambda x, y, **kw: reference(np64(x), ints(y), **kw),
        compile=False,
        gradcheck=False,
        keeps_dtype=False,  # documented: float32 for float16/bfloat16/float32 inputs
        target_arg=1,
        labels={1: "target"},
        magnitude=(0,),  # the logit samples (test (l) leaves from_logits=False ones alone)
        **fields,
    )


NAN_WHEN_EMPTY = "documented: N = 0 gives NaN for a mean-type metric (as torch.mean)"

ECE = metric_case(
    "expected_calibration_error",
    C.expected_calibration_error,
    after_ref.ece,
    ({"n_bins": 5, "norm": "max"}, {"norm": "l2", "binning": "adaptive"}),
    bad=BAD_METRIC + BAD_BINS + [Bad({"norm": "l3"}, ValueError, "norm")],
    skip={"empty": NAN_WHEN_EMPTY},
)
CLASSWISE = metric_case(
    "classwise_calibration_error",
    C.classwise_calibration_error,
    after_ref.classwise_ece,
    ({"n_bins": 5, "norm": "max"}, {"norm": "l2", "binning": "adaptive"}),
    bad=BAD_METRIC + BAD_BINS + [Bad({"norm": "l3"}, ValueError, "norm")],
    skip={"empty": NAN_WHEN_EMPTY},
)
BRIER = metric_case(
    "brier_score",
    C.brier_score,
    after_ref.brier,
    ({"reduction": "none"}, {"reduction": "sum"}),
    reductions=("mean", "sum", "none"),
    empty=empty_metric(reduction="sum"),
    bad=BAD_METRIC + [Bad({"reduction": "avg"}, ValueError, "reduction")],
)
NLL = metric_case(
    "negative_log_likelihood",
    C.negative_log_likelihood,
    after_ref.nll,
    ({"reduction": "none"}, {"reduction": "sum"}),
    reductions=("mean", "sum", "none"),
    empty=empty_metric(reduction="sum"),
    beyond_max="at 3e38 a row's -log p_y (lse - z_y) can exceed float32's range; only the "
    "mean is finite (torch's cross_entropy gives inf there too)",
    bad=BAD_METRIC + [Bad({"reduction": "avg"}, ValueError, "reduction")],
)
CURVE = metric_case(
    "reliability_curve",
    C.reliability_curve,
    after_ref.reliability,
    ({"n_bins": 5},),
    main=lambda curve: curve.confidence,
    bad=BAD_METRIC + BAD_BINS,
    skip={"empty": NAN_WHEN_EMPTY + " (confidence / accuracy of every bin)"},
)


# ----------------------------------------------------------------------------- plots
def bar_heights(plot):
    """The plot, reduced to the heights of its first bar container (then closed)."""

    def op(input, target, **kwargs):
        import matplotlib.pyplot as plt

        fig = plot(input, target, **kwargs)
        try:
            bars = fig.axes[0].containers[0] if fig.axes[0].containers else []
            return torch.tensor([bar.get_height() for bar in bars], dtype=torch.float64)
        finally:
            plt.close(fig)

    return op


def reliability_bars(x, y, n_bins=15, binning="uniform", from_logits=True, ax=None, title=None):
    _, _, accuracy, count = after_ref.reliability(np64(x), ints(y), n_bins, binning, from_logits)
    return accuracy[count > 0]


def histogram_bars(x, y, n_bins=15, from_logits=True, ax=None, title=None):
    return after_ref.histogram_fractions(np64(x), ints(y), n_bins, from_logits)


PLOT_SKIP = {
    "compile": "draws a matplotlib figure",
    "gradcheck": "draws a matplotlib figure",
}
BAD_PLOT = [
    Bad({"title": 3}, TypeError, "title"),
    Bad({"ax": "axes"}, TypeError, "ax"),
    Bad({"n_bins": 0}, ValueError, "n_bins"),
    Bad({"from_logits": 1}, TypeError, "from_logits"),
]
# no magnitude on the plots: their samples are the metrics' (probabilities among them)
PLOT_RELIABILITY = Case(
    name="softmaxkit.calibration.plot_reliability_diagram",
    op=bar_heights(C.plot_reliability_diagram),
    samples=metric_samples(({"n_bins": 5, "title": "t"},)),
    reference=reliability_bars,
    compile=False,
    gradcheck=False,
    keeps_dtype=False,
    empty=lambda: Sample((randn(0, 4), labels(0, classes=4))),
    bad=BAD_PLOT + [Bad({"binning": "quantile"}, ValueError, "binning")],
    labels={1: "target"},
    skip=PLOT_SKIP,
)
PLOT_HISTOGRAM = Case(
    name="softmaxkit.calibration.plot_confidence_histogram",
    op=bar_heights(C.plot_confidence_histogram),
    samples=metric_samples(({"n_bins": 5, "title": "t"},)),
    reference=histogram_bars,
    compile=False,
    gradcheck=False,
    keeps_dtype=False,
    empty=lambda: Sample((randn(0, 4), labels(0, classes=4))),
    bad=BAD_PLOT,
    labels={1: "target"},
    skip=PLOT_SKIP,
)


# ------------------------------------------------------------------------- transforms
TRANSFORMS = {
    "antipignistic": transforms_ref.antipignistic,
    "minimum_specificity": transforms_ref.minimum_specificity,
    "max": transforms_ref.max_normalised,
}


def possibility_ref(p, method="antipignistic", dim=-1):
    x = np.moveaxis(np64(p), dim, -1)
    flat = x.reshape(-1, x.shape[-1])
    out = transforms_ref.rows(TRANSFORMS[method], flat).reshape(x.shape)
    return np.moveaxis(out, -1, dim)


def possibility_samples(dtype):
    return [
        Sample((probs(6, 5, dtype=dtype, seed=20),), grad=(0,)),
        Sample(
            (probs(3, 4, 5, dtype=dtype, seed=21).transpose(1, 2).contiguous(),),
            {"method": "minimum_specificity", "dim": 1},
            grad=(0,),
        ),
        Sample((probs(4, 3, dtype=dtype, seed=22),), {"method": "max"}, grad=(0,)),
    ]


POSSIBILITY = Case(
    name="softmaxkit.calibration.probability_to_possibility",
    op=C.probability_to_possibility,
    samples=possibility_samples,
    reference=possibility_ref,
    dim=True,
    # no magnitude: the input is probabilities in [0, 1]
    empty=lambda: Sample((probs(0, 5),), grad=(0,)),
    bad=[
        Bad({"method": "pignistic"}, ValueError, "method"),
        Bad({"dim": 2}, ValueError, "dim"),
        Bad({}, ValueError, "probs", args={0: 2 * probs(6, 5)}),
        Bad({}, TypeError, "probs", args={0: torch.ones(6, 5, dtype=torch.long)}),
        Bad({}, ValueError, "probs", args={0: torch.tensor(0.5)}),
    ],
)


def each_possibility_method(dtype):
    p = probs(5, 4, dtype=dtype, seed=23)
    return [Sample((p, method)) for method in C.POSSIBILITY_METHODS]


POSSIBILITY_METHODS = Case(
    name="softmaxkit.calibration.POSSIBILITY_METHODS",
    op=lambda p, method: C.probability_to_possibility(p, method=method),
    samples=each_possibility_method,
    reference=lambda p, method: possibility_ref(p, method),
    compile=False,
    gradcheck=False,
    bad=[Bad({}, ValueError, "method", args={1: "pignistic"})],
    skip={
        "compile": "a constant: every listed method runs (and is compiled) through "
        "probability_to_possibility",
        "gradcheck": "a constant: gradients are checked through probability_to_possibility",
    },
)


# ---------------------------------------------------------------------------- scaling
def calibration_data(dtype, n=48, c=4, factor=3.0, seed=30):
    """Over-confident logits ``factor * z`` with labels drawn from ``softmax(z)``."""
    z = randn(n, c, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    shift = torch.linspace(-1.0, 1.0, c, dtype=torch.float64)
    return (factor * z + shift).to(dtype), y


def scaling_samples(c, both=True):
    """Over- and under-confident fit data; queries of shapes (5, C) and (2, 3, C). The
    vector / matrix fits (L-BFGS with autograd) are slow: one sample, both query shapes."""

    def samples(dtype):
        fit, y = calibration_data(dtype, c=c)
        fit2, y2 = calibration_data(dtype, n=30, c=c, factor=0.5, seed=31)
        query2 = randn(2, 3, c, dtype=dtype, seed=33)
        if not both:
            return [Sample((fit2, y2, query2), grad=(2,))]
        return [
            Sample((fit, y, randn(5, c, dtype=dtype, seed=32, scale=2.0)), grad=(2,)),
            Sample((fit2, y2, query2), grad=(2,)),
        ]

    return samples


def scaling_empty(c, **kwargs):
    def empty():
        fit, y = calibration_data(torch.float64, c=c)
        return Sample((fit, y, randn(0, c)), kwargs, grad=(2,))

    return empty


def bad_fit(n: int) -> list[Bad]:
    """Bad calls of a scaler op whose first sample fits ``n`` rows of 4 classes."""
    return [
        Bad({}, TypeError, "logits", args={0: torch.zeros(n, 4, dtype=torch.long)}),
        Bad({}, ValueError, "logits", args={0: randn(n)}),
        Bad({}, ValueError, "logits", args={0: randn(0, 4), 1: labels(0, classes=4)}),
        Bad({}, ValueError, "target", args={1: labels(n, classes=4) + 4}),
        Bad({}, ValueError, "target", args={1: labels(n - 1, classes=4)}),
        Bad({"max_iter": 0}, ValueError, "max_iter"),
        Bad({}, TypeError, "logits", args={2: torch.zeros(5, 4, dtype=torch.long)}),
    ]


FIT_TOL = {torch.float64: {"atol": 1e-6, "rtol": 1e-5}}


_FITTED: dict = {}


def fitted(cls, options: dict, fit, target, **fit_kwargs):
    """``cls(**options).fit(fit, target, **fit_kwargs)``, reused for the same inputs
    (values, dtype, strides) and options: gradcheck calls ``op`` once per perturbed query
    entry, and a refit per call would only repeat the same deterministic fit."""

    def key_of(t):
        if not isinstance(t, torch.Tensor):
            return repr(t)
        data = t.detach().cpu().to(torch.float64 if t.is_floating_point() else torch.int64)
        return (t.dtype, tuple(t.shape), t.stride(), data.numpy().tobytes())

    key = (cls, repr(sorted(options.items())), key_of(fit), key_of(target))
    key += (repr(sorted(fit_kwargs.items())),)
    if key not in _FITTED:
        if len(_FITTED) > 64:
            _FITTED.clear()
        _FITTED[key] = cls(**options).fit(fit, target, **fit_kwargs)
    return _FITTED[key]


def centred(out: torch.Tensor) -> torch.Tensor:
    """``out`` minus its row mean, taken as ``sum(out / C)`` so that logits near the dtype's
    maximum do not overflow in the sum (the extreme-magnitude test)."""
    return out - (out / out.shape[-1]).sum(-1, keepdim=True)


def temperature_op(fit, target, logits, **fit_kwargs):
    return fitted(C.TemperatureScaling, {}, fit, target, **fit_kwargs)(logits)


def temperature_ref(fit, target, logits, max_iter=100, bounds=(1e-2, 1e2)):
    return after_ref.temperature_scaled(np64(fit), ints(target), np64(logits), *bounds)


def vector_op(fit, target, logits, num_classes=None, **fit_kwargs):
    c = fit.shape[-1] if num_classes is None else num_classes
    out = fitted(C.VectorScaling, {"num_classes": c}, fit, target, **fit_kwargs)(logits)
    return centred(out)  # the bias is defined up to a constant


def vector_ref(fit, target, logits, num_classes=None, max_iter=200):
    return after_ref.vector_scaling(np64(fit), ints(target), np64(logits))


def matrix_op(fit, target, logits, num_classes=None, l2=1e-2, bias_l2=1e-2, **fit_kwargs):
    c = fit.shape[-1] if num_classes is None else num_classes
    options = {"num_classes": c, "l2": l2, "bias_l2": bias_l2}
    out = fitted(C.MatrixScaling, options, fit, target, **fit_kwargs)(logits)
    return centred(out)  # a flat direction of a weak penalty: see ref


def matrix_ref(fit, target, logits, num_classes=None, l2=1e-2, bias_l2=1e-2, max_iter=500):
    out = after_ref.matrix_scaling(np64(fit), ints(target), np64(logits), l2, bias_l2)
    return out - out.mean(-1, keepdims=True)


def matrix_samples(dtype):
    """A firm ODIR penalty: the default (1e-2) leaves weakly curved directions that take
    L-BFGS 100-300 iterations on bfloat16-rounded data (the default is the tests' own)."""
    (sample,) = scaling_samples(4, both=False)(dtype)
    sample.kwargs.update(l2=1.0, bias_l2=0.5)
    return [sample]


SCALING_SKIP = {"compile": FIT_NOT_COMPILED}
TEMPERATURE = Case(
    name="softmaxkit.calibration.TemperatureScaling",
    op=temperature_op,
    samples=scaling_samples(4),
    reference=temperature_ref,
    compile=False,
    empty=scaling_empty(4),
    tol=FIT_TOL,
    labels={1: "target"},
    magnitude=(0, 2),
    bad=bad_fit(48)
    + [
        Bad({"bounds": 3.0}, TypeError, "bounds"),
        Bad({"bounds": (0.0, 1.0)}, ValueError, "bounds[0]"),
        Bad({"bounds": (2.0, 1.0)}, ValueError, "bounds[1]"),
    ],
    skip=SCALING_SKIP,
)
VECTOR = Case(
    name="softmaxkit.calibration.VectorScaling",
    op=vector_op,
    samples=scaling_samples(4, both=False),
    reference=vector_ref,
    compile=False,
    empty=scaling_empty(4),
    tol=FIT_TOL,
    labels={1: "target"},
    magnitude=(0, 2),
    bad=bad_fit(30)
    + [
        Bad({"num_classes": 0}, ValueError, "num_classes"),
        Bad({"num_classes": 5}, ValueError, "num_classes=5"),
    ],
    skip=SCALING_SKIP,
)
MATRIX = Case(
    name="softmaxkit.calibration.MatrixScaling",
    op=matrix_op,
    samples=matrix_samples,
    reference=matrix_ref,
    compile=False,
    empty=scaling_empty(4, l2=1.0, bias_l2=0.5),
    tol=FIT_TOL,
    labels={1: "target"},
    magnitude=(0, 2),
    bad=bad_fit(30)
    + [
        Bad({"num_classes": 0}, ValueError, "num_classes"),
        Bad({"l2": -1.0}, ValueError, "l2"),
        Bad({"bias_l2": "0.1"}, TypeError, "bias_l2"),
    ],
    skip=SCALING_SKIP,
)


# -------------------------------------------------------------- correctness-aware (CA)
def views(dtype, n=10, v=3, c=5, seed=40):
    return randn(n, v, c, dtype=dtype, seed=seed, scale=2.0)


def ca_weights(top_k, num_views, hidden):
    """Fixed calibrator weights (w1, b1, w2, b2), float64, giving T well inside (0.1, 10)."""
    width = (num_views - 1) * top_k
    w1 = randn(hidden, width, seed=41)
    b1 = randn(hidden, seed=42, scale=0.5)
    w2 = rand(1, hidden, seed=43) * 0.8
    b2 = torch.tensor([0.6], dtype=torch.float64)
    return w1, b1, w2, b2


def ca_calibrator_op(
    view_logits, target, *, num_views=3, top_k=2, hidden_dim=4, t_min=0.1, t_max=10.0, **fit
):
    """Build with fixed weights, ``fit(epochs=0)`` (validates and marks fitted), calibrate.
    A float64 input runs a float64 calibrator (``.double()``), others the float32 one."""
    cal = C.CorrectnessAwareCalibrator(
        num_views=num_views, top_k=top_k, hidden_dim=hidden_dim, t_min=t_min, t_max=t_max
    )
    if isinstance(view_logits, torch.Tensor) and view_logits.dtype == torch.float64:
        cal = cal.double()
    w1, b1, w2, b2 = ca_weights(top_k, num_views, hidden_dim)
    with torch.no_grad():
        for param, value in zip(
            (cal.embed.weight, cal.embed.bias, cal.head.weight, cal.head.bias), (w1, b1, w2, b2)
        ):
            param.copy_(value)
    return cal.fit(view_logits, target, **{"epochs": 0, **fit})(view_logits)


def ca_calibrator_ref(view_logits, target, *, top_k=2, hidden_dim=4, t_min=0.1, t_max=10.0, **_):
    w1, b1, w2, b2 = (np64(t) for t in ca_weights(top_k, view_logits.shape[1], hidden_dim))
    return after_ref.ca_calibrated(np64(view_logits), w1, b1, w2, b2, top_k, t_min, t_max)


def ca_calibrator_samples(dtype):
    return [
        Sample((views(dtype), labels(10, classes=5, seed=44)), grad=(0,)),
        Sample(
            (views(dtype, n=6, v=4, seed=45), labels(6, classes=5, seed=46)),
            {"num_views": 4, "top_k": 3, "t_min": 0.5, "t_max": 2.0},
            grad=(0,),
        ),
    ]


CA_CALIBRATOR = Case(
    name="softmaxkit.calibration.CorrectnessAwareCalibrator",
    op=ca_calibrator_op,
    samples=ca_calibrator_samples,
    reference=ca_calibrator_ref,
    compile=False,
    empty=lambda: Sample((views(torch.float64, n=0), labels(0, classes=5)), grad=(0,)),
    tol={torch.float32: {"atol": 1e-5, "rtol": 1e-4}},
    bad=[
        Bad({"top_k": 6}, ValueError, "top_k"),
        Bad({"num_views": 4}, ValueError, "num_views=4"),
        Bad({"num_views": 1}, ValueError, "num_views"),
        Bad({"t_min": 0.0}, ValueError, "t_min"),
        Bad({"t_max": 0.05}, ValueError, "t_max"),
        Bad({"hidden_dim": 0}, ValueError, "hidden_dim"),
        Bad({"lr": 0.0}, ValueError, "lr"),
        Bad({"batch_size": 0}, ValueError, "batch_size"),
        Bad({}, ValueError, "view_logits", args={0: randn(10, 5)}),
        Bad({}, TypeError, "target", args={1: labels(10, classes=5).double()}),
        Bad({"balanced": 1}, TypeError, "balanced"),
    ],
    labels={1: "target"},
    # no magnitude: z / T(x) with T down to t_min leaves the float range near 3e38, and the
    # gradient through T is then inf times a saturated (exactly zero) softmax Jacobian
    skip={"compile": FIT_NOT_COMPILED},
)


def ca_loss_ref(logits, target, balanced=True, reduction="mean", ignore_index=-100):
    z, t = np64(logits), ints(target)
    if z.ndim > 2:  # (N, C, d1, ...): classes on axis 1
        z = np.moveaxis(z, 1, -1).reshape(-1, z.shape[1])
    out = after_ref.ca_loss(z, t.reshape(-1), balanced, reduction, ignore_index)
    return out.reshape(t.shape) if reduction == "none" else out


def ca_loss_samples(dtype):
    z = randn(12, 4, dtype=dtype, seed=50, scale=2.0)
    y = labels(12, classes=4, seed=51)
    y_ignored = y.clone()
    y_ignored[[2, 7]] = -100
    return [
        Sample((z, y), {"balanced": False}, grad=(0,)),
        Sample((z, y), grad=(0,)),
        Sample((z, y_ignored), {"reduction": "none"}, grad=(0,)),
        Sample((z, y_ignored), {"reduction": "sum"}, grad=(0,)),
        Sample(
            (randn(3, 4, 2, dtype=dtype, seed=52, scale=2.0), labels(3, 2, classes=4, seed=53)),
            grad=(0,),
        ),
        # every kept row right: the balanced weights vanish, each row gets weight 1
        Sample((z, z.argmax(1)), grad=(0,)),
    ]


CA_BALANCED_MEAN = (
    "documented: balanced 'mean' is the weighted mean sum(w l) / sum(w) (as cross_entropy "
    "with class weights), not sum / kept; every reduction is checked against the reference"
)
CA_LOSS = Case(
    name="softmaxkit.calibration.correctness_aware_loss",
    op=C.correctness_aware_loss,
    samples=ca_loss_samples,
    reference=ca_loss_ref,
    reductions=("mean", "sum", "none"),
    ignore_index=True,
    target_arg=1,
    labels={1: "target"},
    magnitude=(0,),
    empty=lambda: Sample((randn(0, 4), labels(0, classes=4)), grad=(0,)),
    bad=[
        Bad({"reduction": "avg"}, ValueError, "reduction"),
        Bad({"balanced": 1}, TypeError, "balanced"),
        Bad({"ignore_index": 1.5}, TypeError, "ignore_index"),
        Bad({}, TypeError, "logits", args={0: torch.zeros(12, 4, dtype=torch.long)}),
        Bad({}, ValueError, "logits", args={0: torch.tensor(1.0)}),
        Bad({}, ValueError, "logits", args={0: torch.full((12, 4), math.inf)}),
        Bad({}, TypeError, "target", args={1: labels(12, classes=4).double()}),
    ],
    compile=False,
    skip={
        "reductions": CA_BALANCED_MEAN,
        "compile": COMPILED_BY.format("probability_to_possibility"),
    },
)
CA_LOSS_MODULE = dataclasses.replace(
    CA_LOSS,
    name="softmaxkit.calibration.CorrectnessAwareLoss",
    op=lambda logits, target, **kw: C.CorrectnessAwareLoss(**kw)(logits, target),
    compile=False,
    skip={**CA_LOSS.skip, "compile": "module twin: " + CA_LOSS.skip["compile"]},
)


def ca_features_samples(dtype):
    return [
        Sample((views(dtype),), grad=(0,)),
        Sample((views(dtype, n=4, v=4, c=6, seed=54),), {"top_k": 4}, grad=(0,)),
    ]


CA_FEATURES = Case(
    name="softmaxkit.calibration.correctness_aware_features",
    op=C.correctness_aware_features,
    samples=ca_features_samples,
    reference=lambda v, top_k=4: correctness_ref.view_features(np64(v), k=top_k),
    keeps_dtype=False,  # documented: float32 for half inputs
    compile=False,
    skip={"compile": COMPILED_BY.format("probability_to_possibility")},
    magnitude=(0,),
    empty=lambda: Sample((views(torch.float64, n=0),), grad=(0,)),
    bad=[
        Bad({"top_k": 0}, ValueError, "top_k"),
        Bad({"top_k": 6}, ValueError, "top_k"),
        Bad({}, ValueError, "view_logits", args={0: randn(10, 5)}),
        Bad({}, ValueError, "view_logits", args={0: randn(10, 1, 5)}),
        Bad({}, TypeError, "view_logits", args={0: torch.zeros(10, 3, 5, dtype=torch.long)}),
    ],
)

register(
    ECE,
    CLASSWISE,
    BRIER,
    NLL,
    CURVE,
    container("softmaxkit.calibration.ReliabilityCurve", CURVE, lambda r: r.confidence),
    PLOT_RELIABILITY,
    PLOT_HISTOGRAM,
    POSSIBILITY,
    POSSIBILITY_METHODS,
    TEMPERATURE,
    VECTOR,
    MATRIX,
    CA_CALIBRATOR,
    CA_LOSS,
    CA_LOSS_MODULE,
    CA_FEATURES,
)


# ==================================================================================== ood
# ------------------------------------------------------------------------- logit scores
def score_samples(dtype):
    special = torch.tensor(
        [
            [1.0, math.inf, 0.0, math.inf],
            [-math.inf, -math.inf, -math.inf, -math.inf],
            [-math.inf, 2.0, -1.0, -math.inf],
            [0.5, -0.5, 3.0, 1.0],
        ],
        dtype=torch.float64,
    ).to(dtype)
    return [
        Sample((randn(6, 5, dtype=dtype, seed=60, scale=3.0),), grad=(0,)),
        Sample((randn(3, 5, 4, dtype=dtype, seed=61),), {"dim": 1}, grad=(0,)),
        Sample((special,)),  # +-inf rows: defined scores, no finite differences
    ]


def score_ref(row_fn):
    def reference(logits, temperature=None, dim=-1):
        extra = {} if temperature is None else {"temperature": temperature}
        x = np.moveaxis(np64(logits), dim, -1)
        return ood_ref.rows(row_fn, x, **extra)

    return reference


BAD_SCORE = [
    Bad({"dim": 2}, ValueError, "dim"),
    Bad({}, TypeError, "logits", args={0: torch.zeros(6, 5, dtype=torch.long)}),
    Bad({}, ValueError, "logits", args={0: torch.tensor(1.0)}),
    Bad({}, ValueError, "logits", args={0: torch.full((6, 5), math.nan)}),
    Bad({}, ValueError, "logits", args={0: randn(6, 0)}),
]


def score_case(name, op, row_fn, **fields) -> Case:
    return Case(
        name=f"softmaxkit.ood.{name}",
        op=op,
        samples=fields.pop("samples", score_samples),
        reference=score_ref(row_fn),
        dim=True,
        empty=lambda: Sample((randn(0, 5),), grad=(0,)),
        bad=BAD_SCORE + fields.pop("bad", []),
        magnitude=(0,),  # finite scores at any finite logits
        **fields,
    )


def energy_samples(dtype):
    out = score_samples(dtype)
    out[1] = Sample(out[1].args + (2.5,), out[1].kwargs, grad=(0,))
    out.append(Sample((randn(6, 5, dtype=dtype, seed=66, scale=3.0), 0.3), grad=(0,)))
    return out


MSP = score_case("msp_score", O.msp_score, ood_ref.msp_row)
MAX_LOGIT = score_case(
    "max_logit_score",
    O.max_logit_score,
    ood_ref.max_logit_row,
    compile=False,
    skip={"compile": COMPILED_BY.format("msp_score")},
)
ENERGY = score_case(
    "energy_score",
    O.energy_score,
    ood_ref.energy_row,
    samples=energy_samples,
    compile=False,
    skip={"compile": COMPILED_BY.format("msp_score")},
    bad=[
        Bad({"temperature": 0.0}, ValueError, "temperature"),
        Bad({"temperature": "1"}, TypeError, "temperature"),
    ],
)


# --------------------------------------------------------------------------- metrics
def ood_metric_samples(dtype):
    s_in = (randn(20, seed=62) + 1.0).mul(4).round().div(4)  # ties within and across
    s_out = randn(15, seed=63).mul(4).round().div(4)
    return [
        Sample((s_in.to(dtype), s_out.to(dtype))),
        Sample((randn(4, 5, seed=64).to(dtype), randn(3, 2, seed=65).to(dtype))),
        Sample((torch.tensor([math.inf, 1.0, 0.0]).to(dtype), torch.tensor([-math.inf, 1.0]))),
    ]


BAD_OOD_METRIC = [
    Bad({}, TypeError, "score_in", args={0: torch.arange(20)}),
    Bad({}, ValueError, "score_out", args={1: randn(0)}),
    Bad({}, ValueError, "score_in", args={0: torch.tensor([math.nan, 1.0])}),
]
OOD_METRIC_SKIP = {
    "compile": NOT_COMPILED,
    "gradcheck": METRIC_NO_GRAD,
    "empty": "documented: empty score sets are rejected (ValueError)",
}


def ood_metric_case(name, op, reference, **fields) -> Case:
    return Case(
        name=f"softmaxkit.ood.{name}",
        op=op,
        samples=fields.pop("samples", ood_metric_samples),
        reference=reference,
        compile=False,
        gradcheck=False,
        keeps_dtype=False,  # documented: 0-d float64
        magnitude=(0, 1),  # compared in float64: any finite scores
        bad=BAD_OOD_METRIC + fields.pop("bad", []),
        skip=OOD_METRIC_SKIP,
        **fields,
    )


def fpr_samples(dtype):
    out = ood_metric_samples(dtype)
    return out + [Sample(out[0].args, {"tpr": 0.5}), Sample(out[1].args, {"tpr": 1.0})]


AUROC = ood_metric_case(
    "auroc", O.auroc, lambda a, b: ood_ref.auroc(np64(a).ravel(), np64(b).ravel())
)
AUPR_IN = ood_metric_case(
    "aupr_in", O.aupr_in, lambda a, b: ood_ref.average_precision(np64(a).ravel(), np64(b).ravel())
)
AUPR_OUT = ood_metric_case(
    "aupr_out",
    O.aupr_out,
    lambda a, b: ood_ref.average_precision(-np64(b).ravel(), -np64(a).ravel()),
)
FPR = ood_metric_case(
    "fpr_at_tpr",
    O.fpr_at_tpr,
    lambda a, b, tpr=0.95: ood_ref.fpr_at_tpr(np64(a).ravel(), np64(b).ravel(), tpr),
    samples=fpr_samples,
    bad=[Bad({"tpr": 0.0}, ValueError, "tpr"), Bad({"tpr": 1.5}, ValueError, "tpr")],
)


# ------------------------------------------------------------------ feature detectors
def clustered(dtype, n=60, d=3, classes=3, seed=70):
    """Features around one centre per class, every class present; labels ``i % classes``."""
    y = torch.arange(n) % classes
    centres = 3.0 * torch.eye(classes, d, dtype=torch.float64)
    return (randn(n, d, seed=seed) + centres[y]).to(dtype), y


def pooled(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1).mean(2) if x.ndim > 2 else x


def mahalanobis_op(train, target, query, *, eps=0.0, num_classes=None, covariance="empirical"):
    det = O.Mahalanobis(eps=eps, covariance=covariance).fit(train, target, num_classes=num_classes)
    return det.score(query), det.class_scores(query)


def mahalanobis_ref(train, target, query, *, eps=0.0, num_classes=None, covariance="empirical"):
    t, y, q = pooled(np64(train)), ints(target), pooled(np64(query))
    shrink = covariance == "ledoit_wolf"
    means, _, precision = ood_ref.mahalanobis_fit(t, y, int(y.max()) + 1, eps, shrink)
    return (
        ood_ref.mahalanobis_score(q, means, precision),
        ood_ref.mahalanobis_class_scores(q, means, precision),
    )


def mahalanobis_samples(dtype):
    train, y = clustered(dtype)
    maps = randn(24, 3, 2, 2, dtype=dtype, seed=71) + 2.0 * torch.eye(3)[torch.arange(24) % 3][
        :, :, None, None
    ].to(dtype)
    return [
        Sample((train, y, randn(7, 3, dtype=dtype, seed=72, scale=2.0)), grad=(2,)),
        Sample(
            (maps, torch.arange(24) % 3, randn(5, 3, 2, 2, dtype=dtype, seed=73)),
            {"eps": 0.1, "num_classes": 3},
            grad=(2,),
        ),
        Sample(
            (train, y, randn(7, 3, dtype=dtype, seed=72, scale=2.0)),
            {"covariance": "ledoit_wolf"},
            grad=(2,),
        ),
    ]


MAHALANOBIS = Case(
    name="softmaxkit.ood.Mahalanobis",
    op=mahalanobis_op,
    samples=mahalanobis_samples,
    reference=mahalanobis_ref,
    compile=False,
    empty=lambda: Sample((*clustered(torch.float64), randn(0, 3)), grad=(2,)),
    tol={torch.bfloat16: {"atol": 0.05, "rtol": 0.05}},
    labels={1: "target"},
    magnitude=(0, 2),  # the score is scale-free: finite at any finite features
    bad=[
        Bad({"eps": -1.0}, ValueError, "eps"),
        Bad({"covariance": "shrunk"}, ValueError, "covariance"),
        Bad({"num_classes": 0}, ValueError, "num_classes"),
        Bad({"num_classes": 4}, ValueError, "target"),
        Bad({}, ValueError, "features", args={2: randn(7, 4)}),
        Bad({}, ValueError, "features", args={0: randn(60)}),
        Bad({}, TypeError, "features", args={0: torch.zeros(60, 3, dtype=torch.long)}),
        Bad({}, ValueError, "features", args={0: torch.full((60, 3), math.inf)}),
    ],
    skip={"compile": FIT_NOT_COMPILED},
)


def ensemble_op(train, target, val_in, val_out, query, *, eps=0.0, C=1.0, covariance="empirical"):
    ens = O.MahalanobisEnsemble(eps=eps, C=C, covariance=covariance).fit(list(train), target)
    return ens.fit_regression(list(val_in), list(val_out)).score(list(query))


def ensemble_ref(train, target, val_in, val_out, query, *, eps=0.0, C=1.0):
    arrays = (np64(train), ints(target), np64(val_in), np64(val_out), np64(query))
    return after_ref.mahalanobis_ensemble(*arrays, C=C, eps=eps)


def ensemble_samples(dtype):
    """Two layers stacked on axis 0; OOD validation features partly overlap the ID ones."""
    a, y = clustered(torch.float64, n=45, seed=74)
    b, _ = clustered(torch.float64, n=45, seed=75)
    ood = randn(2, 12, 3, seed=76, scale=2.0) + 2.0
    val = torch.stack([clustered(torch.float64, n=12, seed=s)[0] for s in (77, 78)])
    query = randn(2, 6, 3, seed=79, scale=2.0) + 1.0
    args = (torch.stack([a, b]), y, val, ood, query)
    args = tuple(t.to(dtype) if t.is_floating_point() else t for t in args)
    return [Sample(args, grad=(4,)), Sample(args, {"eps": 0.05, "C": 0.3}, grad=(4,))]


ENSEMBLE = Case(
    name="softmaxkit.ood.MahalanobisEnsemble",
    op=ensemble_op,
    samples=ensemble_samples,
    reference=ensemble_ref,
    compile=False,
    keeps_dtype=False,  # documented: float64 scores
    tol={
        torch.float64: {"atol": 1e-7, "rtol": 1e-6},
        torch.float16: {"atol": 0.02, "rtol": 0.02},
        torch.bfloat16: {"atol": 0.15, "rtol": 0.1},
    },
    labels={1: "target"},
    magnitude=(0, 2, 3, 4),
    bad=[
        Bad({"C": 0.0}, ValueError, "C"),
        Bad({"eps": -1.0}, ValueError, "eps"),
        Bad({"covariance": "diagonal"}, ValueError, "covariance"),
        Bad({}, ValueError, "features", args={4: randn(2, 6, 4)}),
        Bad({}, ValueError, "features", args={4: randn(3, 6, 3)}),
    ],
    skip={
        "compile": FIT_NOT_COMPILED,
        "empty": "a fit needs samples; an empty query is Mahalanobis's empty case",
    },
)


def logistic_samples(dtype):
    x = randn(30, 3, seed=80, scale=2.0)
    logit = x @ torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64) + 0.3
    y = (rand(30, seed=81) < torch.sigmoid(logit)).long()
    return [Sample((x.to(dtype), y)), Sample((x.to(dtype), y.bool()), {"C": 0.2})]


LOGISTIC = Case(
    name="softmaxkit.ood.logistic_regression",
    op=O.logistic_regression,
    samples=logistic_samples,
    reference=lambda x, y, C=1.0, max_iter=500: after_ref.logistic_regression(np64(x), ints(y), C),
    compile=False,
    gradcheck=False,
    keeps_dtype=False,  # documented: float64 weights
    tol={torch.float64: {"atol": 1e-7, "rtol": 1e-6}},
    magnitude=(0,),
    bad=[
        Bad({"C": 0.0}, ValueError, "C"),
        Bad({"max_iter": 0}, ValueError, "max_iter"),
        Bad({}, ValueError, "x", args={0: randn(30)}),
        Bad({}, ValueError, "x", args={0: torch.full((30, 3), math.inf)}),
        Bad({}, ValueError, "y", args={1: torch.full((30,), 2)}),
        Bad({}, ValueError, "y", args={1: torch.full((30,), 0.5)}),
        Bad({}, ValueError, "y", args={1: torch.zeros(29)}),
        Bad({}, TypeError, "y", args={1: [0, 1]}),
    ],
    skip={
        "compile": FIT_NOT_COMPILED,
        "gradcheck": FIT_NO_GRAD,
        "empty": "documented: a fit needs at least one sample (ValueError)",
    },
)


def preprocess_op(train, target, inputs, magnitude):
    det = O.Mahalanobis().fit(train, target)
    return det.preprocess(lambda x: x, inputs, noise_magnitude=magnitude)


def preprocess_samples(dtype):
    train, y = clustered(dtype)
    inputs = randn(6, 3, dtype=dtype, seed=82, scale=2.0)
    return [Sample((train, y, inputs, m)) for m in O.NOISE_MAGNITUDES]


NOISE = Case(
    name="softmaxkit.ood.NOISE_MAGNITUDES",
    op=preprocess_op,
    samples=preprocess_samples,
    reference=lambda t, y, x, m: after_ref.mahalanobis_preprocess(np64(t), ints(y), np64(x), m),
    compile=False,
    gradcheck=False,
    labels={1: "target"},
    magnitude=(0, 2),  # x - eps * sign(grad): finite at any finite features
    bad=[
        Bad({}, ValueError, "noise_magnitude", args={3: -0.01}),
        Bad({}, ValueError, "model output", args={2: randn(6, 4)}),
    ],
    skip={
        "compile": FIT_NOT_COMPILED,
        "gradcheck": "a signed-gradient step: piecewise constant, returned detached",
    },
)


def knn_op(train, query, *, k=3, chunk_size=None):
    return O.KNNScore(k, chunk_size=chunk_size).fit(train).score(query)


def knn_samples(dtype):
    train = randn(20, 4, dtype=dtype, seed=83)
    return [
        Sample((train, randn(6, 4, dtype=dtype, seed=84))),
        Sample((train, randn(9, 4, dtype=dtype, seed=85)), {"k": 5, "chunk_size": 2}),
    ]


KNN = Case(
    name="softmaxkit.ood.KNNScore",
    op=knn_op,
    samples=knn_samples,
    reference=lambda train, query, k=3, chunk_size=None: ood_ref.knn_score(
        np64(train), np64(query), k
    ),
    compile=False,
    gradcheck=False,
    empty=lambda: Sample((randn(20, 4, seed=83), randn(0, 4))),
    magnitude=(0, 1),  # on normalised features: finite at any finite features
    bad=[
        Bad({"k": 0}, ValueError, "k"),
        Bad({"k": 21}, ValueError, "features"),
        Bad({"chunk_size": 0}, ValueError, "chunk_size"),
        Bad({}, ValueError, "features", args={1: randn(6, 5)}),
        Bad({}, ValueError, "features", args={0: randn(20)}),
        Bad({}, ValueError, "features", args={1: torch.full((6, 4), math.nan)}),
    ],
    skip={
        "compile": FIT_NOT_COMPILED,
        "gradcheck": "a nearest-neighbour search: the score is computed on detached features",
    },
)


def prototype_op(prototypes, query, prototype_labels=None, *, num_classes=2, temperature=0.5):
    score = O.PrototypeScore(
        prototypes,
        num_classes=num_classes,
        prototype_labels=prototype_labels,
        temperature=temperature,
    )
    return score.score(query), score.class_scores(query)


def prototype_ref(prototypes, query, prototype_labels=None, *, num_classes=2, temperature=0.5):
    p = np64(prototypes)
    lab = np.arange(len(p)) % num_classes if prototype_labels is None else ints(prototype_labels)
    return ood_ref.prototype_score(p, lab, np64(query), temperature)


def prototype_samples(dtype):
    """The first sample gives ``prototype_labels`` (positional: the labels test reads it)."""
    protos = randn(6, 4, dtype=dtype, seed=86)
    return [
        Sample(
            (protos, randn(3, 4, dtype=dtype, seed=88), torch.tensor([2, 0, 1, 1, 0, 2])),
            {"num_classes": None},
            grad=(1,),
        ),
        Sample((protos, randn(5, 4, dtype=dtype, seed=87)), grad=(1,)),
    ]


PROTOTYPE = Case(
    name="softmaxkit.ood.PrototypeScore",
    op=prototype_op,
    samples=prototype_samples,
    reference=prototype_ref,
    compile=False,
    empty=lambda: Sample((randn(6, 4, seed=86), randn(0, 4)), grad=(1,)),
    labels={2: "prototype_labels"},
    magnitude=(0, 1),  # on normalised features: finite at any finite features
    bad=[
        Bad({"temperature": 0.0}, ValueError, "temperature"),
        Bad({"num_classes": None}, ValueError, "num_classes", args={2: None}),
        Bad({"num_classes": 7}, ValueError, "num_classes", args={2: None}),
        Bad({}, ValueError, "prototype", args={2: torch.tensor([0, 0, 0, 2, 2, 2])}),
        Bad({}, ValueError, "features", args={1: randn(3, 5)}),
        Bad({}, ValueError, "prototypes", args={0: randn(0, 4)}),
    ],
    skip={"compile": FIT_NOT_COMPILED},
)


def ssd_op(train, query, *, official_centering=False, covariance="empirical"):
    ssd = O.SSDScore(official_centering=official_centering, covariance=covariance)
    return ssd.fit(train).score(query)


def ssd_samples(dtype):
    train = randn(30, 4, dtype=dtype, seed=89) + 2.0
    return [
        Sample((train, randn(5, 4, dtype=dtype, seed=90) + 2.0), grad=(1,)),
        Sample((train, randn(4, 4, dtype=dtype, seed=91)), {"official_centering": True}, grad=(1,)),
        Sample(
            (train, randn(4, 4, dtype=dtype, seed=92)), {"covariance": "ledoit_wolf"}, grad=(1,)
        ),
    ]


SSD = Case(
    name="softmaxkit.ood.SSDScore",
    op=ssd_op,
    samples=ssd_samples,
    reference=lambda train, query, official_centering=False, covariance="empirical": (
        ood_ref.ssd_score(np64(train), np64(query), official_centering, covariance == "ledoit_wolf")
    ),
    compile=False,
    tol={torch.float64: {"atol": 1e-8, "rtol": 1e-7}, torch.bfloat16: {"atol": 0.1, "rtol": 0.1}},
    empty=lambda: Sample((randn(30, 4, seed=89), randn(0, 4)), grad=(1,)),
    magnitude=(0, 1),  # on normalised features: finite at any finite features
    bad=[
        Bad({"official_centering": 1}, TypeError, "official_centering"),
        Bad({"official_centering": None}, TypeError, "official_centering"),
        Bad({"covariance": "ledoit"}, ValueError, "covariance"),
        Bad({}, ValueError, "features", args={0: randn(1, 4)}),
        Bad({}, ValueError, "features", args={1: randn(5, 3)}),
        Bad({}, ValueError, "features", args={0: randn(0, 4)}),
    ],
    skip={"compile": FIT_NOT_COMPILED},
)

register(
    MSP,
    MAX_LOGIT,
    ENERGY,
    AUROC,
    AUPR_IN,
    AUPR_OUT,
    FPR,
    MAHALANOBIS,
    ENSEMBLE,
    LOGISTIC,
    NOISE,
    KNN,
    PROTOTYPE,
    SSD,
)


# ================================================================================= labels
def crowd(n_items=12, n_annotators=5, k=3, seed=100, unannotated=True) -> torch.Tensor:
    """Noisy annotations of a hidden truth, about 20% missing; item 0 unannotated."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(k, (n_items, 1), generator=g)
    noise = torch.randint(k, (n_items, n_annotators), generator=g)
    right = torch.rand(n_items, n_annotators, generator=g) < 0.7
    a = torch.where(right, truth, noise)
    a = torch.where(torch.rand(n_items, n_annotators, generator=g) < 0.2, -1, a)
    if unannotated:
        a[0] = -1
    return a


def crowd_samples(extra: dict | None = None):
    def samples(dtype):
        kw = {"dtype": dtype, **(extra or {})}
        return [
            Sample((crowd(), 3), dict(kw)),
            Sample((crowd(15, 4, k=4, seed=101, unannotated=False), 4), dict(kw)),
        ]

    return samples


def crowd_ref(fn, **fixed):
    def reference(annotations, num_classes, dtype=None, **kwargs):
        return fn(ints(annotations), num_classes, **{**kwargs, **fixed})

    return reference


def mace_ref(annotations, num_classes, n_restarts=10, seed=0, default_noise=0.5, **kwargs):
    """MACE from the documented starts: U[1, 2 + noise] draws of a torch.Generator seeded
    with ``seed`` (spam (R, M, 2), then strategies (R, M, K), float64), normalised."""
    kwargs.pop("dtype", None)
    a = ints(annotations)
    g = torch.Generator().manual_seed(seed)
    width = 1.0 + default_noise
    spam = 1.0 + width * torch.rand(n_restarts, a.shape[1], 2, generator=g, dtype=torch.float64)
    strategy = 1.0 + width * torch.rand(
        n_restarts, a.shape[1], num_classes, generator=g, dtype=torch.float64
    )
    spam = (spam / spam.sum(-1, keepdim=True)).numpy()
    strategy = (strategy / strategy.sum(-1, keepdim=True)).numpy()
    return labels_ref.mace(a, num_classes, spam, strategy, **kwargs)


def ds_ref(annotations, num_classes, dtype=None, return_params=False, **kwargs):
    post, errors, priors, iterations = labels_ref.dawid_skene(ints(annotations), num_classes)
    return (post, errors, priors, iterations) if return_params else post


def aggregate_ref(annotations, num_classes, methods=None, *, weights=None, dtype=None, seed=0):
    refs = {
        "standard": crowd_ref(labels_ref.standard),
        "softmax": crowd_ref(labels_ref.softmax),
        "ds": ds_ref,
        "glad": crowd_ref(labels_ref.glad),
        "mace": lambda a, k: mace_ref(a, k, seed=seed),
        "wawa": crowd_ref(labels_ref.wawa),
        "zbs": crowd_ref(labels_ref.zero_based_skill),
    }
    outs = [refs[name](annotations, num_classes) for name in methods]
    return np.average(np.stack(outs), axis=0, weights=weights)


BAD_CROWD = [
    Bad({}, ValueError, "num_classes", args={1: 0}),
    Bad({}, TypeError, "num_classes", args={1: 3.0}),
    Bad({}, ValueError, "annotations", args={0: crowd() + 3}),
    Bad({}, ValueError, "annotations", args={0: torch.zeros(12, dtype=torch.long)}),
    Bad({}, TypeError, "annotations", args={0: crowd().double()}),
    Bad({"dtype": torch.int64}, ValueError, "dtype"),
    Bad({"missing": 1.5}, TypeError, "missing"),
]
CROWD_SKIP = {
    "compile": NOT_COMPILED,
    "gradcheck": INT_INPUT,
}


def crowd_case(name, op, reference, extra=None, **fields) -> Case:
    return Case(
        name=f"softmaxkit.labels.{name}",
        op=op,
        samples=crowd_samples(extra),
        reference=reference,
        compile=False,
        gradcheck=False,
        empty=lambda: Sample((torch.zeros(0, 4, dtype=torch.long), 3)),
        bad=BAD_CROWD + fields.pop("bad", []),
        labels={0: "annotations"},
        skip={**CROWD_SKIP, **fields.pop("skip", {})},
        **fields,
    )


STANDARD = crowd_case(
    "standard_soft_labels", LB.standard_soft_labels, crowd_ref(labels_ref.standard)
)
SOFTMAX = crowd_case(
    "softmax_soft_labels",
    LB.softmax_soft_labels,
    crowd_ref(labels_ref.softmax),
    bad=[Bad({"temperature": 0.0}, ValueError, "temperature")],
)
DS = crowd_case(
    "dawid_skene",
    LB.dawid_skene,
    ds_ref,
    bad=[
        Bad({"n_iter": 0}, ValueError, "n_iter"),
        Bad({"tol": 0.0}, ValueError, "tol"),
        Bad({"return_params": 1}, TypeError, "return_params"),
    ],
)
GLAD = crowd_case(
    "glad",
    LB.glad,
    crowd_ref(labels_ref.glad),
    # the reference's M-step is scipy's CG, the library's L-BFGS, both stopped at a
    # gradient tolerance of 1e-2: the posteriors agree to a few 1e-3
    tol={torch.float64: {"atol": 5e-3, "rtol": 0.0}},
    bad=[
        Bad({"n_iter": 0}, ValueError, "n_iter"),
        Bad({"m_step_max_iter": 0}, ValueError, "m_step_max_iter"),
        Bad({"m_step_tol": -1.0}, ValueError, "m_step_tol"),
    ],
)
MACE = crowd_case(
    "mace",
    LB.mace,
    mace_ref,
    extra={"n_restarts": 3, "n_iter": 10},
    bad=[
        Bad({"method": "map"}, ValueError, "method"),
        Bad({"seed": 1.5}, TypeError, "seed"),
        Bad({"n_restarts": 0}, ValueError, "n_restarts"),
        Bad({"alpha": 0.0}, ValueError, "alpha"),
        Bad({"smoothing": -1.0}, ValueError, "smoothing"),
    ],
)
WAWA = crowd_case("wawa", LB.wawa, crowd_ref(labels_ref.wawa))
ZBS = crowd_case(
    "zero_based_skill",
    LB.zero_based_skill,
    crowd_ref(labels_ref.zero_based_skill),
    bad=[
        Bad({"lr_reduce_factor": 2.0}, ValueError, "lr_reduce_factor"),
        Bad({"lr_steps_to_reduce": 0}, ValueError, "lr_steps_to_reduce"),
        Bad({"eps": 0.0}, ValueError, "eps"),
    ],
)


def each_method(dtype):
    a = crowd(10, 4, seed=102)
    extra = {"mace": {"n_restarts": 2, "n_iter": 5}}
    return [Sample((a, 3, name), {"dtype": dtype, **extra.get(name, {})}) for name in LB.METHODS]


def methods_ref(annotations, num_classes, name, dtype=None, **kwargs):
    refs = {
        "standard": crowd_ref(labels_ref.standard),
        "softmax": crowd_ref(labels_ref.softmax),
        "ds": ds_ref,
        "glad": crowd_ref(labels_ref.glad),
        "mace": mace_ref,
        "wawa": crowd_ref(labels_ref.wawa),
        "zbs": crowd_ref(labels_ref.zero_based_skill),
    }
    return refs[name](annotations, num_classes, **kwargs)


SOFT_LABELS_SKIP = "a constant: each method runs every shared test through its own case"
METHODS = Case(
    name="softmaxkit.labels.METHODS",
    op=lambda annotations, num_classes, name, **kw: LB.METHODS[name](
        annotations, num_classes, **kw
    ),
    samples=each_method,
    reference=methods_ref,
    compile=False,
    gradcheck=False,
    tol={torch.float64: {"atol": 5e-3, "rtol": 0.0}},  # glad (see its case)
    labels={0: "annotations"},
    skip={
        "dtypes": SOFT_LABELS_SKIP,
        "noncontiguous": SOFT_LABELS_SKIP,
        "compile": SOFT_LABELS_SKIP,
        "gradcheck": SOFT_LABELS_SKIP,
    },
)

DS_FIT = dataclasses.replace(
    DS,
    name="softmaxkit.labels.DawidSkeneFit",
    op=lambda a, k, **kw: LB.dawid_skene(a, k, return_params=True, **kw),
    reference=lambda a, k, **kw: ds_ref(a, k, return_params=True),
    main=lambda fit: fit.probs,
    empty=None,
    bad=[],
    skip={
        **DS.skip,
        "empty": CONTAINER.format("softmaxkit.labels.dawid_skene"),
        "bad": CONTAINER.format("softmaxkit.labels.dawid_skene"),
    },
)


def aggregate_samples(dtype):
    methods = ("standard", "softmax", "wawa", "ds")
    return [
        Sample((crowd(), 3, methods), {"dtype": dtype}),
        Sample(
            (crowd(15, 4, k=4, seed=101), 4, ("zbs", "mace", "standard")),
            {"dtype": dtype, "weights": [1.0, 2.0, 0.5], "seed": 3},
        ),
    ]


AGGREGATE = Case(
    name="softmaxkit.labels.aggregate_soft_labels",
    op=LB.aggregate_soft_labels,
    samples=aggregate_samples,
    reference=aggregate_ref,
    compile=False,
    gradcheck=False,
    empty=lambda: Sample((torch.zeros(0, 4, dtype=torch.long), 3, ("standard", "wawa"))),
    bad=[
        Bad({}, ValueError, "methods", args={2: ("bogus",)}),
        Bad({}, ValueError, "methods", args={2: "ds"}),
        Bad({}, ValueError, "methods", args={2: ()}),
        Bad({"seed": 1.5}, TypeError, "seed"),
        Bad({"weights": [1.0]}, ValueError, "weights"),
        Bad({}, ValueError, "num_classes", args={1: 0}),
        Bad({}, TypeError, "annotations", args={0: crowd() >= 0}),
    ],
    labels={0: "annotations"},
    skip=CROWD_SKIP,
)


def average_samples(dtype):
    p, q, r = (probs(4, 3, dtype=dtype, seed=s) for s in (110, 111, 112))
    return [
        Sample((p, q, r), grad=(0, 1, 2)),
        Sample((p, q, r), {"weights": [3.0, 1.0, 0.0]}, grad=(0, 1, 2)),
        Sample((p, q, r), {"weights": torch.tensor([0.5, 0.25, 0.25])}, grad=(0, 1, 2)),
    ]


def average_op(p, q, r, *, weights=None):
    return LB.average_soft_labels([p, q, r], weights)


def average_ref(p, q, r, *, weights=None):
    w = None if weights is None else np64(weights)
    return np.average(np.stack([np64(p), np64(q), np64(r)]), axis=0, weights=w)


AVERAGE = Case(
    name="softmaxkit.labels.average_soft_labels",
    op=average_op,
    samples=average_samples,
    reference=average_ref,
    empty=lambda: Sample((probs(0, 3), probs(0, 3), probs(0, 3)), grad=(0, 1, 2)),
    bad=[
        Bad({"weights": [-1.0, 1.0, 1.0]}, ValueError, "weights[0]"),
        Bad({"weights": [0.0, 0.0, 0.0]}, ValueError, "weights"),
        Bad({"weights": [1.0, 2.0]}, ValueError, "weights"),
        Bad({"weights": "abc"}, TypeError, "weights"),
        Bad({"weights": torch.tensor([1, 1, 1])}, TypeError, "weights"),
        Bad({}, ValueError, "distributions[1]", args={1: probs(4, 2)}),
        Bad({}, TypeError, "distributions[0]", args={0: torch.ones(4, 3, dtype=torch.long)}),
        Bad({}, ValueError, "distributions[2]", args={2: torch.full((4, 3), math.nan)}),
        Bad({}, ValueError, "distributions[1]", args={1: torch.full((4, 3), math.inf)}),
        Bad({}, ValueError, "distributions[0]", args={0: torch.full((4, 3), -math.inf)}),
        Bad({"weights": torch.tensor([1.0, math.inf, 1.0])}, ValueError, "weights"),
    ],
    magnitude=(0, 1, 2),
)


def simulated_top_two(seed=120, n_items=20, n_workers=8, k=3):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 0.9, n_workers)
    q = rng.uniform(0.6, 0.9, n_items)
    ann, _, _ = labels_ref.simulate_top_two(n_items, n_workers, k, p, q, rng)
    return torch.from_numpy(ann), p, q


def top_two_samples(dtype):
    a, p, q = simulated_top_two()
    b, _, _ = simulated_top_two(seed=121, n_items=15, n_workers=6, k=4)
    known = {
        "reliability": torch.from_numpy(p).to(dtype),
        "confusion": torch.from_numpy(q).to(dtype),
    }
    return [
        Sample((a, 3), {"dtype": dtype}),
        Sample((b, 4), {"dtype": dtype}),
        Sample((a, 3), {"dtype": dtype, **known}),
    ]


def top_two_ref(annotations, num_classes, dtype=None, reliability=None, confusion=None):
    p = None if reliability is None else np64(reliability)
    q = None if confusion is None else np64(confusion)
    return labels_ref.top_two(ints(annotations), num_classes, p_known=p, q_known=q)


TOP_TWO = Case(
    name="softmaxkit.labels.top_two_answers",
    op=LB.top_two_answers,
    samples=top_two_samples,
    reference=top_two_ref,
    compile=False,
    gradcheck=False,
    main=lambda result: result.confusion,
    bad=[
        Bad({}, ValueError, "num_classes", args={1: 2}),
        Bad({}, ValueError, "annotations", args={0: torch.full((4, 3), -1)}),
        Bad({}, ValueError, "annotations", args={0: simulated_top_two()[0] + 3}),
        Bad({"reliability": torch.full((7,), 0.5)}, ValueError, "reliability"),
        Bad({"reliability": torch.ones(8)}, ValueError, "reliability"),
        Bad({"confusion": torch.full((20,), 1.5)}, ValueError, "confusion"),
        Bad({"dtype": torch.int64}, ValueError, "dtype"),
    ],
    labels={0: "annotations"},
    skip={
        "compile": NOT_COMPILED,
        "gradcheck": INT_INPUT,
        "empty": "documented: needs at least one observed annotation (ValueError)",
    },
)


def tt_soft_op(top1, top2, confusion, num_classes):
    result = LB.TopTwoResult(top1, top2, confusion, torch.ones(1, dtype=confusion.dtype))
    return LB.top_two_soft_labels(result, num_classes)


def tt_soft_samples(dtype):
    g = torch.Generator().manual_seed(130)
    top1 = torch.randint(4, (7,), generator=g)
    top2 = (top1 + 1 + torch.randint(3, (7,), generator=g)) % 4
    q = (0.5 + 0.5 * rand(7, seed=131)).to(dtype)
    return [Sample((top1, top2, q, 4), grad=(2,)), Sample((top1, top2, q, 6), grad=(2,))]


TT_SOFT = Case(
    name="softmaxkit.labels.top_two_soft_labels",
    op=tt_soft_op,
    samples=tt_soft_samples,
    reference=lambda g, h, q, k: after_ref.top_two_soft_labels(ints(g), ints(h), np64(q), k),
    compile=False,
    empty=lambda: Sample(
        (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), rand(0), 3),
        grad=(2,),
    ),
    bad=[
        Bad({}, ValueError, "num_classes", args={3: 3}),
        Bad({}, ValueError, "num_classes", args={3: 1}),
        Bad({}, TypeError, "num_classes", args={3: 4.0}),
        Bad({}, TypeError, "result.confusion", args={2: torch.ones(7, dtype=torch.long)}),
    ],
    labels={0: "top1", 1: "top2"},
    skip={"compile": NOT_COMPILED},
)

TOP_TWO_RESULT = dataclasses.replace(
    container("softmaxkit.labels.TopTwoResult", TOP_TWO, lambda r: r.confusion),
    # the fields of a hand-built result, as top_two_soft_labels consumes them
    op=tt_soft_op,
    samples=tt_soft_samples,
    labels={0: "top1", 1: "top2"},
    bad=[
        Bad({}, TypeError, "top1", args={0: torch.zeros(7)}),
        Bad({}, TypeError, "top2", args={1: torch.ones(7, dtype=torch.bool)}),
        Bad({}, ValueError, "top1", args={0: torch.zeros(3, dtype=torch.long)}),
        Bad({}, ValueError, "top2", args={1: torch.zeros(9, dtype=torch.long)}),
        Bad({}, ValueError, "top1", args={0: -torch.ones(7, dtype=torch.long)}),
        Bad({}, ValueError, "top2", args={1: torch.full((7,), 4)}),
        Bad({}, ValueError, "confusion", args={2: torch.full((7, 1), 0.7)}),
        Bad({}, ValueError, "confusion", args={2: torch.full((7,), 1.5)}),
    ],
)
TOP_TWO_RESULT.skip.pop("bad")

register(
    STANDARD,
    SOFTMAX,
    DS,
    DS_FIT,
    GLAD,
    MACE,
    WAWA,
    ZBS,
    METHODS,
    AGGREGATE,
    AVERAGE,
    TOP_TWO,
    TOP_TWO_RESULT,
    TT_SOFT,
)


# =============================================================================== dynamics
def collapse_logits(dtype, rows=8, classes=5, seed=140):
    """Rows far from every precision's threshold: gap 2 (never collapses), 30 (float32 /
    float16 / bfloat16 only) or 80 (every precision), a tie, a masked entry."""
    x = rand(rows, classes, seed=seed) * 2.0 - 1.0  # competitors within 2 of each other
    gaps = torch.tensor([2.0, 30.0, 80.0, 2.0, 30.0, 80.0, 0.0, 30.0], dtype=torch.float64)
    x[:, 0] = x.max(1).values + 1.0 + gaps[:rows] - 1.0
    x[6, 1] = x[6, 0]  # a tie never collapses
    x[7, 2] = -math.inf  # a masked class adds nothing
    return x[:rows].to(dtype)


PRECISION = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}


def collapse_fraction_ref(logits, dim=-1, dtype=torch.float32):
    x = np.moveaxis(np64(logits), dim, -1)
    return after_ref.softmax_collapse(x, precision=PRECISION[dtype])[0]


def collapse_fraction_samples(dtype):
    x = collapse_logits(dtype)
    x3 = torch.stack([x, x.flip(0)]).transpose(1, 2).contiguous()  # (2, 5, 8), classes dim 1
    return [
        Sample((x,)),
        Sample((x,), {"dtype": torch.float64}),
        Sample((x,), {"dtype": torch.bfloat16}),
        Sample((x3,), {"dim": 1, "dtype": torch.float16}),
    ]


BAD_COLLAPSE = [
    Bad({"dim": 2}, ValueError, "dim"),
    Bad({"dtype": torch.int32}, ValueError, "dtype"),
    Bad({"dtype": "float32"}, TypeError, "dtype"),
    Bad({}, TypeError, "logits", args={0: torch.zeros(8, 5, dtype=torch.long)}),
    Bad({}, ValueError, "logits", args={0: torch.tensor(1.0)}),
]
COLLAPSE_FRACTION = Case(
    name="softmaxkit.dynamics.softmax_collapse_fraction",
    op=D.softmax_collapse_fraction,
    samples=collapse_fraction_samples,
    reference=collapse_fraction_ref,
    dim=True,
    compile=False,
    gradcheck=False,
    keeps_dtype=False,  # documented: a 0-d float32 fraction
    empty=lambda: Sample((randn(0, 5),)),
    bad=BAD_COLLAPSE,
    magnitude=(0,),
    skip={
        "compile": NOT_COMPILED,
        "gradcheck": "a count of rows under no_grad: not differentiable by contract",
    },
)


def collapse_ref(logits, target=None, *, dim=-1, dtype=torch.float32, loss_fn=None):
    x = np.moveaxis(np64(logits), dim, -1)
    t = None
    if target is not None:
        t = ints(target) if not target.is_floating_point() else np64(target).argmax(dim)
    return after_ref.softmax_collapse(x, t, precision=PRECISION[dtype])


def collapse_samples(dtype):
    x = collapse_logits(dtype)
    right = torch.zeros(8, dtype=torch.long)  # class 0 is every row's maximum
    mixed = right.clone()
    mixed[[1, 3]] = 2
    mixed[5] = -100
    return [
        Sample((x, right)),
        Sample((x, mixed)),
        Sample((x, F.one_hot(mixed.clamp(min=0), 5).to(dtype)), {"dtype": torch.float64}),
    ]


def collapse_container_samples(dtype):
    """With and without a target (``zero_loss_fraction`` is then ``None``)."""
    x = collapse_logits(dtype)
    return [Sample((x,)), Sample((x,), {"dtype": torch.bfloat16}), collapse_samples(dtype)[1]]


def collapse_main(result):
    if result.zero_loss_fraction is None:
        return result.fraction
    return torch.stack([result.fraction, result.zero_loss_fraction])


COLLAPSE = Case(
    name="softmaxkit.dynamics.softmax_collapse",
    op=D.softmax_collapse,
    samples=collapse_samples,
    reference=collapse_ref,
    prob_targets=True,
    target_arg=1,
    dim=True,
    compile=False,
    gradcheck=False,
    main=collapse_main,
    keeps_dtype=False,  # documented: float32 fractions, a boolean mask
    empty=lambda: Sample((randn(0, 5), labels(0, classes=5))),
    bad=BAD_COLLAPSE
    + [
        Bad({"loss_fn": 3}, TypeError, "loss_fn"),
        Bad({}, ValueError, "target", args={1: torch.zeros(7, dtype=torch.long)}),
        Bad({}, ValueError, "target", args={1: torch.zeros(8, 4)}),
        Bad({}, TypeError, "target", args={1: [0] * 8}),
        Bad({}, TypeError, "target", args={1: torch.zeros(8)}),
        Bad({}, TypeError, "target", args={1: torch.zeros(8, dtype=torch.bool)}),
    ],
    skip={
        "compile": NOT_COMPILED,
        "gradcheck": "a count of rows under no_grad: not differentiable by contract",
    },
    labels={1: "target"},
    magnitude=(0,),
)


def strided_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy with ``t``'s strides (so a non-contiguous parameter stays non-contiguous)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
    return out.copy_(t.detach())


def perpgrad_op(
    w,
    g,
    *,
    rescale=True,
    base_optimizer_cls=torch.optim.SGD,
    params=None,
    set_to_none=None,
    **base_kwargs,
):
    """One step of PerpGrad around a plain optimizer on one parameter ``w`` with gradient
    ``g``: returns (the projected gradient, the updated parameter). ``params`` replaces the
    parameter list given to PerpGrad (for the argument checks); ``set_to_none`` calls
    ``zero_grad`` after the step."""
    param = torch.nn.Parameter(strided_copy(w))
    param.grad = strided_copy(g)
    given = [param] if params is None else params
    opt = D.PerpGrad(given, base_optimizer_cls, rescale=rescale, **{"lr": 1.0, **base_kwargs})
    opt.step()
    out = param.grad.detach().clone(), param.detach().clone()
    if set_to_none is not None:
        opt.zero_grad(set_to_none=set_to_none)
    return out


def perpgrad_reference(w, g, *, rescale=True, base_optimizer_cls=torch.optim.SGD, lr=1.0):
    if base_optimizer_cls is torch.optim.SGD:
        return after_ref.perpgrad_sgd_step(np64(w), np64(g), lr, rescale)
    assert base_optimizer_cls is torch.optim.AdamW
    perp = pg.perpendicular(np64(w), np64(g), rescale=rescale)
    zeros = np.zeros_like(perp)
    new, _, _ = pg.adamw_step(np64(w), perp, zeros, zeros, 1, lr, (0.9, 0.999), 1e-8, 0.01)
    return perp, new


def perpgrad_samples(dtype):
    w = randn(4, 3, dtype=dtype, seed=150)
    g = randn(4, 3, dtype=dtype, seed=151)
    v = randn(6, dtype=dtype, seed=152)
    return [
        Sample((w, g)),
        Sample((v, randn(6, dtype=dtype, seed=153)), {"rescale": False, "lr": 0.5}),
        Sample((torch.zeros(5, dtype=dtype), randn(5, dtype=dtype, seed=154))),  # w = 0
        Sample((v, 2 * v), {"rescale": False}),  # g parallel to w: projected to 0
        Sample((w, g), {"base_optimizer_cls": torch.optim.AdamW, "lr": 0.01}),
    ]


PERPGRAD = Case(
    name="softmaxkit.dynamics.PerpGrad",
    op=perpgrad_op,
    samples=perpgrad_samples,
    reference=perpgrad_reference,
    compile=False,
    gradcheck=False,
    empty=lambda: Sample((randn(0), randn(0))),
    bad=[
        Bad({"base_optimizer_cls": torch.optim.LBFGS}, ValueError, "base_optimizer_cls"),
        Bad({"base_optimizer_cls": int}, TypeError, "base_optimizer_cls"),
        Bad({"rescale": 1}, TypeError, "rescale"),
        Bad({"lr": -1.0}, ValueError, "lr"),
        Bad({"lr": "0.1"}, TypeError, "lr"),
        Bad({"lr": torch.ones(2)}, ValueError, "lr"),
        Bad({"set_to_none": 0}, TypeError, "set_to_none"),
        Bad({"params": []}, ValueError, "params"),
        Bad({"params": 3}, TypeError, "params"),
        Bad({"params": torch.ones(3)}, TypeError, "params"),
        Bad({"params": [3.0]}, TypeError, "params[0]"),
    ],
    skip={
        "compile": "an optimizer wrapper: its step runs under no_grad, outside a traced graph",
        "gradcheck": "an optimizer step (no_grad): nothing to differentiate",
    },
)

register(
    COLLAPSE_FRACTION,
    COLLAPSE,
    container(
        "softmaxkit.dynamics.SoftmaxCollapse",
        COLLAPSE,
        collapse_main,
        samples=collapse_container_samples,
        reference=collapse_ref,
    ),
    PERPGRAD,
)
