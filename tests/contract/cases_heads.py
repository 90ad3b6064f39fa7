"""Contract cases of ``softmaxkit.heads``: every name in its ``__all__``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF

from softmaxkit import heads as H
from tests.contract.inputs import labels, np64, probs, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import contract_ref, spherical_ref

N, D, V = 4, 3, 6
REDUCTIONS = ("mean", "sum", "none")


def unit_rows(w):
    """``w`` with rows of L1 norm 1: a product ``x @ w.T`` then never exceeds ``max |x|``, also
    in its partial sums, so the extreme-magnitude test (which scales ``x`` up to the float
    maximum) sees logits whose float32 matmul does not overflow (a matmul whose partial
    sums overflow is out of scope: torch's own ``F.linear`` gives inf there)."""
    return (w.double() / w.double().abs().sum(-1, keepdim=True)).to(w.dtype)


# ----------------------------------------------------------- fused linear + cross-entropy


def lce_samples(dtype):
    x, w = randn(N, D, dtype=dtype), unit_rows(randn(V, D, dtype=dtype, seed=7))
    y = labels(N, classes=V)
    return [
        # "none": the fused "mean"/"sum" hand forward-computed gradients to one backward
        # only, so gradcheck (which backpropagates several times) runs on "none"
        Sample((x, w, y), {"reduction": "none", "chunk_size": 3}, grad=(0, 1)),
        Sample(
            (randn(2, 3, D, dtype=dtype, seed=1), w, labels(2, 3, classes=V, seed=2)),
            {
                "reduction": "none",
                "linear_bias": randn(V, dtype=dtype, seed=3),
                "weight": torch.rand(V, generator=torch.Generator().manual_seed(4)).to(dtype),
                "label_smoothing": 0.1,
                "softcap": 2.0,
                "logsumexp_penalty": 0.01,
            },
            grad=(0, 1),
        ),
        Sample((x, w, probs(N, V, dtype=dtype)), {"label_smoothing": 0.2}),
        Sample((x, w, y), {"return_extras": True}),
    ]


def lce_reference(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    return_extras=False,
    chunk_size=None,
    **options,
):
    z = np64(input).reshape(-1, linear_weight.shape[1]) @ np64(linear_weight).T
    if linear_bias is not None:
        z = z + np64(linear_bias)
    t = np64(target).reshape(z.shape) if target.is_floating_point() else target.reshape(-1)
    w = None if weight is None else np64(weight)
    loss = contract_ref.cross_entropy(
        z, t.numpy() if hasattr(t, "numpy") else t, weight=w, **options
    )
    if options.get("reduction") == "none":
        loss = loss.reshape(target.shape[: target.ndim - int(target.is_floating_point())])
    if not return_extras:
        return loss
    lse = np.array([row.max() + np.log(np.exp(row - row.max()).sum()) for row in z])
    predicted = z.argmax(-1)
    accuracy = float((predicted == target.numpy()).mean())
    return loss, lse, predicted, accuracy


def lce_baseline(input, linear_weight, target, **options):
    """torch's own cross_entropy of the logits in the input dtype (plain options only)."""
    plain = {"reduction", "chunk_size", "label_smoothing"}
    if set(options) - plain or target.is_floating_point():
        return None
    options.pop("chunk_size", None)
    return TF.cross_entropy(input @ linear_weight.T, target, **options)


lce = Case(
    name="softmaxkit.heads.linear_cross_entropy",
    op=H.linear_cross_entropy,
    samples=lce_samples,
    reference=lce_reference,
    baseline=lce_baseline,
    reductions=REDUCTIONS,
    ignore_index=True,
    target_arg=2,
    labels={2: "target"},
    prob_targets=True,
    num_classes=lambda s: s.args[1].shape[0],
    prob_axis=-1,
    empty=lambda: Sample((randn(0, D), randn(V, D), torch.zeros(0, dtype=torch.long)), grad=(0, 1)),
    magnitude=(0,),
    bad=[
        Bad({}, TypeError, "input", args={0: [[1.0]]}),
        Bad({}, ValueError, "linear_weight", args={1: randn(V, D + 1)}),
        Bad({"reduction": "avg"}, ValueError, "reduction"),
        Bad({"softcap": -1.0}, ValueError, "softcap"),
        Bad({"chunk_size": 0}, ValueError, "chunk_size"),
        Bad({"return_extras": 1}, TypeError, "return_extras"),
    ],
)


def lce_twin(
    input, linear_weight, target, *, linear_bias=None, weight=None, return_extras=False, **options
):
    head = H.LinearCrossEntropy(
        linear_weight.shape[1],
        linear_weight.shape[0],
        linear_bias is not None,
        class_weight=weight,
        dtype=input.dtype,
        **options,
    )
    with torch.no_grad():
        head.weight.copy_(linear_weight)
        if linear_bias is not None:
            head.bias.copy_(linear_bias)
    return head(input, target, return_extras)


EXTRAS = "result container of linear_cross_entropy(..., return_extras=True)"
register(
    lce,
    Case(
        name="softmaxkit.heads.LinearCrossEntropy",
        op=lce_twin,
        samples=lce.samples,
        reference=lce.reference,
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=2,
        labels={2: "target"},
        prob_targets=True,
        num_classes=lce.num_classes,
        prob_axis=-1,
        empty=lce.empty,
        compile=False,
        bad=lce.bad[2:],
        skip={
            "compile": "module twin: its functional is compiled",
            "gradcheck": "module twin: the weight is a Parameter, not an input; the same "
            "autograd path is gradchecked on linear_cross_entropy",
        },
    ),
    Case(
        name="softmaxkit.heads.LinearCrossEntropyExtras",
        op=lambda *args, **kw: H.linear_cross_entropy(*args, return_extras=True, **kw)[1],
        samples=lambda dtype: lce_samples(dtype)[:1],
        main=lambda extras: extras.lse,
        no_reference=EXTRAS + " (its fields are checked with linear_cross_entropy's reference)",
        noncontiguous=False,
        compile=False,
        gradcheck=False,
        keeps_dtype=False,
        skip={t: EXTRAS for t in ("dtypes", "noncontiguous", "compile", "gradcheck", "empty")},
    ),
)


# ------------------------------------------------------------ spherical exact-gradient layer


def spherical_layer_samples(dtype):
    return [
        Sample(
            (randn(N, D, dtype=dtype), labels(N, classes=V), randn(V, D, seed=7)),
            {"loss": "spherical_softmax", "eps": 0.1},
            grad=(0,),
        ),
        Sample(
            (randn(N, D, dtype=dtype, seed=2), labels(N, classes=V, seed=3), randn(V, D, seed=8)),
            {"loss": "z_loss", "a": 0.5, "b": 1.0},
            grad=(0,),
        ),
        Sample(
            (randn(N, D, dtype=dtype, seed=4), labels(N, classes=V, seed=5), randn(V, D, seed=9)),
            {"loss": "taylor_softmax"},
            grad=(0,),
        ),
    ]


def spherical_layer(h, target, w, **options):
    """The layer with its weight W set to ``w``."""
    layer = H.SphericalOutputLayer(w.shape[1], w.shape[0], **options)
    layer.set_weight(w)
    return layer(h, target)


def spherical_layer_reference(h, target, w, *, loss, a=None, b=None, eps=None):
    o = np64(h) @ np64(w).T
    if loss == "z_loss":
        per = spherical_ref.z_loss(o, target.numpy(), a, b)
    elif loss == "spherical_softmax":
        per = spherical_ref.spherical_softmax_loss(o, target.numpy(), eps)
    else:
        per = spherical_ref.taylor_softmax_loss(o, target.numpy())
    return float(per.mean())


register(
    Case(
        name="softmaxkit.heads.SphericalOutputLayer",
        op=spherical_layer,
        samples=spherical_layer_samples,
        reference=spherical_layer_reference,
        empty=None,
        keeps_dtype=False,
        magnitude=(0,),
        labels={1: "target"},
        bad=[
            Bad({"loss": "nope"}, ValueError, "loss"),
            Bad({"lr": -1.0}, ValueError, "lr"),
        ],
        skip={
            "empty": "a batch of no examples has no mean loss to train on",
            "compile": "trains its weight factors in place (buffers) in step(); the forward "
            "records the batch for it",
        },
        compile=False,
    ),
)


# ----------------------------------------------------------------------------- VQ-Logits

K = 2
MAPPING = torch.tensor([0, 1, 1, 0, 1, 0])


def vq_head(codebook, dtype, **options):
    head = H.VQLogits(D, V, K, assignment=MAPPING, dtype=dtype, **options)
    with torch.no_grad():
        head.codebook.copy_(codebook)
    return head


def vq_samples(dtype):
    return [
        Sample(
            (
                randn(N, D, dtype=dtype),
                unit_rows(randn(K, D, dtype=dtype, seed=7)),
                labels(N, classes=V),
            ),
            grad=(0,),
        ),
        Sample(
            (
                randn(2, 3, D, dtype=dtype, seed=1),
                unit_rows(randn(K, D, dtype=dtype, seed=8)),
                labels(2, 3, classes=V, seed=2),
            ),
            {"reduction": "none"},
            grad=(0,),
        ),
    ]


def vq_logits(hidden, codebook, target, *, bias=False, **options):
    """``(head.cross_entropy(hidden, target, **options), head(hidden))``: the loss is what
    the shared tests compare (reductions, ignore_index, labels, magnitudes); the vocabulary
    logits are checked against the reference too."""
    head = vq_head(codebook, hidden.dtype, bias=bias)
    return head.cross_entropy(hidden, target, **options), head(hidden)


def vq_reference(hidden, codebook, target, **options):
    logits = (np64(hidden) @ np64(codebook).T)[..., MAPPING.numpy()]
    loss = contract_ref.cross_entropy(logits.reshape(-1, V), target.reshape(-1).numpy(), **options)
    if options.get("reduction") == "none":
        loss = loss.reshape(target.shape)
    return loss, logits


register(
    Case(
        name="softmaxkit.heads.VQLogits",
        op=vq_logits,
        samples=vq_samples,
        reference=vq_reference,
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=2,
        labels={2: "target"},
        magnitude=(0,),
        empty=lambda: Sample(
            (randn(0, D), randn(K, D), torch.zeros(0, dtype=torch.long)), grad=(0,)
        ),
        bad=[
            Bad({}, ValueError, "hidden", args={0: randn(N, D + 1)}),
            Bad({"reduction": "avg"}, ValueError, "reduction"),
            Bad({}, ValueError, "target", args={2: torch.full((N,), V)}),
            Bad({"bias": 1}, TypeError, "bias"),
        ],
        skip={
            "compile": "module: its parameters are built per call here; forward is a matmul "
            "and a gather, cross_entropy the shared cross-entropy rules over a logsumexp"
        },
        compile=False,
    ),
)


# -------------------------------------------------------------------------------- k-means

KMEANS = (
    "random k-means++ seeding: the centroids depend on the draws; "
    "tests/heads/test_vq_logits.py checks the objective, reproducibility and refills"
)


def kmeans_samples(dtype):
    return [Sample((randn(8, D, dtype=dtype), 3), {"generator": None, "iters": 5})]


def kmeans(points, num_clusters, *, generator=None, seed=0, **options):
    return H.kmeans(points, num_clusters, generator=torch.Generator().manual_seed(seed), **options)


register(
    Case(
        name="softmaxkit.heads.kmeans",
        op=kmeans,
        samples=kmeans_samples,
        no_reference=KMEANS,
        main=lambda result: result.centroids,
        keeps_dtype=False,  # documented: centroids in the compute dtype (float32 for half)
        gradcheck=False,
        magnitude=(0,),
        compile=False,
        empty=None,
        tol={
            torch.float16: {"atol": 5e-2, "rtol": 5e-2},
            torch.bfloat16: {"atol": 2e-1, "rtol": 1e-1},
        },
        bad=[
            Bad({}, ValueError, "num_clusters", args={1: 0}),
            Bad({"init": "nope"}, ValueError, "init"),
            Bad({"iters": -1}, ValueError, "iters"),
        ],
        skip={
            "gradcheck": "clustering: no gradient",
            "compile": "data-dependent iterations (stops when assignments settle)",
            "empty": "k-means of no points has no clusters",
        },
    ),
    Case(
        name="softmaxkit.heads.KMeansResult",
        op=kmeans,
        samples=kmeans_samples,
        no_reference="result container of kmeans",
        main=lambda result: result.centroids,
        noncontiguous=False,
        gradcheck=False,
        compile=False,
        skip={
            t: "result container of kmeans"
            for t in ("dtypes", "noncontiguous", "compile", "gradcheck", "empty")
        },
    ),
)


# ------------------------------------------------------------------------------- kNN-LM

KEYS = randn(7, D, seed=11)
VALUES = torch.tensor([0, 2, 2, 5, 1, 0, 3])
KNN = {"k": 3, "temperature": 0.7, "lambda_": 0.25}


def knn_samples(dtype):
    return [
        Sample((randn(N, D, dtype=dtype), randn(N, V, dtype=dtype, seed=5)), dict(KNN), grad=(1,)),
        Sample(
            (randn(N, D, dtype=dtype, seed=2), randn(N, V, dtype=dtype, seed=6)),
            {**KNN, "metric": "ip", "lambda_": 0.5},
            grad=(1,),
        ),
    ]


def knnlm(queries, lm_logits, **options):
    return H.KNNLM(KEYS.to(queries.dtype), VALUES, V, **options)(queries, lm_logits)


register(
    Case(
        name="softmaxkit.heads.KNNLM",
        op=knnlm,
        samples=knn_samples,
        reference=lambda q, lm, k, temperature, lambda_, metric="l2": contract_ref.knnlm_log_probs(
            np64(q), np64(lm), np64(KEYS), VALUES.numpy(), V, k, temperature, lambda_, metric
        ),
        empty=lambda: Sample((randn(0, D), randn(0, V)), dict(KNN), grad=(1,)),
        magnitude=(1,),  # lm_logits; the queries: see the report (squared distances)
        bad=[
            Bad({"k": 0}, ValueError, "k"),
            Bad({"lambda_": 2.0}, ValueError, "lambda_"),
            Bad({"metric": "cos"}, ValueError, "metric"),
        ],
        skip={
            "compile": "module: builds its datastore per call here; the search loops over "
            "chunks with data-dependent top-k merging"
        },
        compile=False,
    ),
)
