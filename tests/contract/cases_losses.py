"""Contract cases of ``softmaxkit.losses``: every name in its ``__all__``.

Losses follow ``torch.nn.functional.cross_entropy``: logits (N, C) or (N, C, d1, ...), the
class axis 1, class-index targets (N, ...) or probabilities of the logits' shape. The float64
references are the row-at-a-time transcriptions in ``tests/reference/``; here they are
applied per position and reduced ("mean" over the non-ignored positions).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from softmaxkit import losses as L
from tests.contract.inputs import labels, np64, probs, rand, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import (
    comp_sum_ref,
    compositional_ref,
    distill_ref,
    divergence_ref,
    hinge_ref,
    ldr_ref,
    maps_ref,
    metric_ref,
    retrieval_ref,
    spherical_ref,
)

REDUCTIONS = ("mean", "sum", "none")
N, C = 4, 5
# class indices at position 1 (test (k)); logits scaled to the extremes (test (l))
CLASS_FIELDS = {"labels": {1: "target"}, "magnitude": (0,)}
# Test (l) at 3e38 (float32, bfloat16) does not apply where the result there is an average
# of per-row or per-term values beyond the dtype's range (lse - z_y, log q_k or a sum of
# logits reach twice the maximum): no float32 computation gets that average without a
# wider accumulation (torch's own cross_entropy gives inf there as well). These cases set
# beyond_max=BEYOND_RANGE: test (l) runs them at 1e19, 1e30 and float16's 6e4.
BEYOND_RANGE = (
    "at 3e38 the per-row (or per-term) values exceed float32's range and only their "
    "average is finite (torch's cross_entropy gives inf there too)"
)
TWIN_COMPILE = "module twin: its functional is compiled"
TWIN_GRADCHECK = "module twin: the same autograd path is gradchecked on its functional"


def twin(base: Case, name: str, op, **changes) -> Case:
    """The module twin of ``base``: same samples and reference, not compiled again."""
    skip = {
        **base.skip,
        "compile": TWIN_COMPILE,
        "gradcheck": TWIN_GRADCHECK,
        **changes.pop("skip", {}),
    }
    return dataclasses.replace(base, name=name, op=op, compile=False, skip=skip, **changes)


def reduce(per: np.ndarray, reduction: str, kept: np.ndarray | None = None):
    if reduction == "none":
        return per
    if reduction == "sum":
        return float(per.sum())
    count = per.size if kept is None else int(kept.sum())
    return float(per.sum() / count) if count else 0.0


# --------------------------------------------------------- class losses: (logits, target)


def class_samples(extra: dict | None = None, prob: bool = True):
    """(4, 5) logits with index targets, (2, 5, 3) logits with (2, 3) targets, and (if the
    reference takes them) (4, 5) probability targets."""
    extra = extra or {}

    def samples(dtype):
        out = [
            Sample((randn(N, C, dtype=dtype), labels(N, classes=C)), dict(extra), grad=(0,)),
            Sample(
                (randn(2, C, 3, dtype=dtype, seed=1), labels(2, 3, classes=C, seed=4)),
                dict(extra),
                grad=(0,),
            ),
        ]
        if prob:
            out.append(
                Sample(
                    (randn(N, C, dtype=dtype, seed=5), probs(N, C, dtype=dtype)),
                    dict(extra),
                    grad=(0,),
                )
            )
        return out

    return samples


def class_reference(rows, takes_probs: bool = True):
    """A float64 reference of a class loss from ``rows(z (M, C), target (M,) or (M, C),
    **options) -> (M,)``; a probability target is passed on when ``takes_probs``, else taken
    as the expected loss sum_k t_k rows(z, k)."""

    def ref(logits, target, *args, reduction="mean", ignore_index=-100, **options):
        z = np64(logits.movedim(1, -1))
        shape, classes = z.shape[:-1], z.shape[-1]
        z = z.reshape(-1, classes)
        if target.is_floating_point():
            t = np64(target.movedim(1, -1)).reshape(-1, classes)
            if takes_probs:
                per = rows(z, t, *args, **options)
            else:
                per = sum(
                    t[:, k] * rows(z, np.full(len(z), k), *args, **options) for k in range(classes)
                )
            return reduce(np.asarray(per).reshape(shape), reduction)
        t = target.reshape(-1).numpy()
        kept = t != ignore_index
        per = np.zeros(len(t))
        if kept.any():
            per[kept] = rows(z[kept], t[kept], *args, **options)
        return reduce(per.reshape(shape), reduction, kept)

    return ref


def class_bad(first: str = "logits"):
    return [
        Bad({}, TypeError, first, args={0: [[1.0, 2.0]]}),
        Bad({"reduction": "avg"}, ValueError, "reduction"),
        Bad({}, ValueError, "target", args={1: torch.zeros(N + 1, dtype=torch.long)}),
    ]


def class_empty(extra: dict | None = None):
    return lambda: Sample(
        (randn(0, C), torch.zeros(0, dtype=torch.long)), dict(extra or {}), grad=(0,)
    )


def class_case(name, op, rows, *, extra=None, takes_probs=True, prob=True, **fields) -> Case:
    fields.setdefault("bad", class_bad())
    fields.setdefault("labels", {1: "target"})  # class indices at position 1, every loss
    return Case(
        name=name,
        op=op,
        samples=class_samples(extra, prob=prob and takes_probs),
        reference=class_reference(rows, takes_probs),
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=1,
        prob_targets=prob,
        empty=class_empty(extra),
        **fields,
    )


def twin_of(cls, *positional: str):
    """Module twin call: ``cls(*options named in positional, **other options)(logits,
    target)``."""

    def op(logits, target, **options):
        args = [options.pop(p) for p in positional]
        return cls(*args, **options)(logits, target)

    return op


# StableMax cross-entropy
stablemax_ce = class_case(
    "softmaxkit.losses.stablemax_cross_entropy",
    L.stablemax_cross_entropy,
    lambda z, t: maps_ref.stablemax_cross_entropy(z, t),
    takes_probs=False,
    magnitude=(0,),
)
register(
    stablemax_ce,
    twin(
        stablemax_ce,
        "softmaxkit.losses.StableMaxCrossEntropyLoss",
        twin_of(L.StableMaxCrossEntropyLoss),
    ),
)


# the comp-sum family
def comp_sum_rows(tau):
    def rows(z, t):
        if t.ndim == 2:
            return comp_sum_ref.comp_sum_soft(z, t, tau)
        return comp_sum_ref.comp_sum(z, t, tau)

    return rows


comp_sum = class_case(
    "softmaxkit.losses.comp_sum_loss",
    lambda logits, target, tau=0.5, **kw: L.comp_sum_loss(logits, target, tau, **kw),
    lambda z, t, tau=0.5: comp_sum_rows(tau)(z, t),
    extra={"tau": 0.5},
    bad=[*class_bad(), Bad({"tau": -1.0}, ValueError, "tau")],
    **CLASS_FIELDS,
)
sum_exp = class_case(
    "softmaxkit.losses.sum_exp_loss", L.sum_exp_loss, comp_sum_rows(0.0), **CLASS_FIELDS
)
gce = class_case(
    "softmaxkit.losses.generalized_cross_entropy",
    L.generalized_cross_entropy,
    lambda z, t, q=0.7: comp_sum_rows(1.0 + q)(z, t),
    extra={"q": 0.4},
    bad=[*class_bad(), Bad({"q": 0.0}, ValueError, "q")],
    **CLASS_FIELDS,
)
mae = class_case("softmaxkit.losses.mae_loss", L.mae_loss, comp_sum_rows(2.0), **CLASS_FIELDS)
register(
    comp_sum,
    sum_exp,
    gce,
    mae,
    twin(comp_sum, "softmaxkit.losses.CompSumLoss", twin_of(L.CompSumLoss, "tau")),
    twin(sum_exp, "softmaxkit.losses.SumExpLoss", twin_of(L.SumExpLoss)),
    twin(
        gce,
        "softmaxkit.losses.GeneralizedCrossEntropyLoss",
        twin_of(L.GeneralizedCrossEntropyLoss, "q"),
    ),
    twin(mae, "softmaxkit.losses.MAELoss", twin_of(L.MAELoss)),
)


# adversarial comp-sum: a fixed linear model, a deterministic attack (no random start)
ADV = {"nu": 0.5, "radius": 0.1, "steps": 2, "random_start": False}


def adversarial_samples(dtype):
    w = randn(3, C, seed=8)
    w = (w / w.abs().sum(0).max()).to(dtype)  # |logits| <= max |x|: no overflow in the model

    def model(x, w=w):
        return x @ w.to(x.dtype)

    return [
        Sample((model, randn(N, 3, dtype=dtype), labels(N, classes=C)), {"tau": 0.5, **ADV}),
        Sample(
            (model, randn(N, 3, dtype=dtype, seed=6), labels(N, classes=C, seed=2)),
            {"tau": 1.0, **ADV, "norm": "l2"},
        ),
    ]


def adversarial(model, inputs, target, tau=0.5, **kw):
    return L.adversarial_comp_sum_loss(model, inputs, target, tau, **kw)


ADV_NO_REF = (
    "the PGD attack is an iterative estimate of a sup with no closed form in general; "
    "tests/losses/test_comp_sum.py checks it against the exact sup of a linear model"
)
adversarial_case = Case(
    name="softmaxkit.losses.adversarial_comp_sum_loss",
    op=adversarial,
    samples=adversarial_samples,
    no_reference=ADV_NO_REF,
    reductions=REDUCTIONS,
    ignore_index=True,
    target_arg=2,
    prob_targets=True,
    num_classes=lambda s: C,
    compile=False,
    gradcheck=False,
    labels={2: "target"},
    magnitude=(1,),
    bad=[
        Bad({"nu": -1.0}, ValueError, "nu"),
        Bad({"norm": "l3"}, ValueError, "norm"),
        Bad({"steps": -1}, ValueError, "steps"),
        Bad({"random_start": 1}, TypeError, "random_start"),
        Bad({"eval_during_attack": "yes"}, TypeError, "eval_during_attack"),
    ],
    skip={
        "compile": "runs a PGD attack (autograd.grad in a loop) inside the loss",
        "gradcheck": "the attack's sign steps make the loss piecewise in the input",
        "empty": "a model call on an empty batch is the model's business",
    },
)


def adversarial_twin(model, inputs, target, tau=0.5, **kw):
    return L.AdversarialCompSumLoss(tau, **kw)(model, inputs, target)


register(
    adversarial_case,
    twin(adversarial_case, "softmaxkit.losses.AdversarialCompSumLoss", adversarial_twin),
)


# spherical family
z_loss = class_case(
    "softmaxkit.losses.z_loss",
    L.z_loss,
    lambda z, t, a, b, eps=1e-12: spherical_ref.z_loss(z, t, a, b, eps),
    extra={"a": 0.5, "b": 1.0},
    bad=[*class_bad(), Bad({"a": 0.0}, ValueError, "a")],
    magnitude=(0,),
)
spherical = class_case(
    "softmaxkit.losses.spherical_softmax_loss",
    L.spherical_softmax_loss,
    lambda z, t, eps: spherical_ref.spherical_softmax_loss(z, t, eps),
    extra={"eps": 1e-3},
    bad=[*class_bad(), Bad({"eps": -1.0}, ValueError, "eps")],
    magnitude=(0,),
)
taylor = class_case(
    "softmaxkit.losses.taylor_softmax_loss",
    L.taylor_softmax_loss,
    lambda z, t: spherical_ref.taylor_softmax_loss(z, t),
    magnitude=(0,),
)
register(
    z_loss,
    spherical,
    taylor,
    twin(z_loss, "softmaxkit.losses.ZLoss", twin_of(L.ZLoss, "a", "b")),
    twin(
        spherical, "softmaxkit.losses.SphericalSoftmaxLoss", twin_of(L.SphericalSoftmaxLoss, "eps")
    ),
    twin(taylor, "softmaxkit.losses.TaylorSoftmaxLoss", twin_of(L.TaylorSoftmaxLoss)),
)


# PaLM's log-sum-exp penalty: one value per position, the class axis ``dim``
def lse_samples(dtype):
    return [
        Sample((randn(N, C, dtype=dtype),), {"dim": 1}, grad=(0,)),
        Sample((randn(2, 3, C, dtype=dtype, seed=1),), {"dim": 2, "weight": 0.1}, grad=(0,)),
        Sample(
            (randn(N, C, dtype=dtype, seed=2),),
            {"dim": 1, "mask": torch.tensor([True, False, True, True])},
            grad=(0,),
        ),
    ]


def lse_reference(logits, *, weight=1e-4, dim=1, reduction="mean", mask=None):
    z = np64(logits.movedim(dim, -1))
    per = spherical_ref.logsumexp_penalty(z.reshape(-1, z.shape[-1]), weight).reshape(z.shape[:-1])
    kept = None
    if mask is not None:
        kept = np.broadcast_to(mask.numpy(), z.shape[:-1])
        per = np.where(kept, per, 0.0)
    return reduce(per, reduction, kept)


lse = Case(
    name="softmaxkit.losses.logsumexp_penalty",
    op=L.logsumexp_penalty,
    samples=lse_samples,
    reference=lse_reference,
    reductions=REDUCTIONS,
    dim=True,
    magnitude=(0,),
    empty=lambda: Sample((randn(0, C),), grad=(0,)),
    bad=[
        Bad({}, TypeError, "logits", args={0: [[1.0, 2.0]]}),
        Bad({"weight": -1.0}, ValueError, "weight"),
        Bad({"reduction": "avg"}, ValueError, "reduction"),
        Bad({"dim": 3}, ValueError, "dim"),
    ],
    skip={"reductions": "'mean' is over kept positions (mask); checked by the reference"},
)
register(
    lse,
    twin(
        lse,
        "softmaxkit.losses.LogSumExpPenalty",
        lambda logits, *, weight=1e-4, dim=1, reduction="mean", mask=None: L.LogSumExpPenalty(
            weight, dim=dim, reduction=reduction
        )(logits, mask),
        bad=lse.bad[1:3],
    ),
)


# LDR-KL and ALDR-KL
def ldr_rows(z, t, lam=10.0, margin=0.1, normalize="softplus_mean"):
    return ldr_ref.ldr_kl(z, t, lam, margin, normalize)


ldr = class_case(
    "softmaxkit.losses.ldr_kl_loss",
    L.ldr_kl_loss,
    ldr_rows,
    bad=[
        *class_bad(),
        Bad({"lam": 0.0}, ValueError, "lam"),
        Bad({"normalize": "l2"}, ValueError, "normalize"),
    ],
    **CLASS_FIELDS,
)
register(ldr, twin(ldr, "softmaxkit.losses.LDRKLLoss", twin_of(L.LDRKLLoss)))


def aldr_samples(dtype):
    lam = torch.tensor([10.0, 5.0, 2.0, 8.0], dtype=dtype)
    return [
        Sample((randn(N, C, dtype=dtype), labels(N, classes=C), lam), grad=(0,)),
        Sample((randn(N, C, dtype=dtype, seed=5), probs(N, C, dtype=dtype), lam), grad=(0,)),
        Sample(
            (randn(N, C, dtype=dtype, seed=6), labels(N, classes=C, seed=3), 4.0),
            {"normalize": "softplus_mean", "alpha": 3.0},
            grad=(0,),
        ),
    ]


def aldr_reference(
    logits,
    target,
    lam_prev,
    *,
    lam0=10.0,
    alpha=2.0,
    margin=0.1,
    normalize="l1_mean",
    reduction="mean",
    ignore_index=-100,
):
    lam_prev = np.broadcast_to(np64(lam_prev), (logits.shape[0],))
    t = np64(target) if target.is_floating_point() else target.numpy()
    losses, lams = ldr_ref.aldr_kl(np64(logits), t, lam_prev, lam0, alpha, margin, normalize)
    return reduce(losses, reduction), lams


aldr = Case(
    name="softmaxkit.losses.aldr_kl_loss",
    skip={
        "gradcheck": "the new lambda (and the additive term) are detached by definition "
        "(aldr_kl_loss docstring, as the official ALDRLoss_V1): not the full derivative"
    },
    op=L.aldr_kl_loss,
    samples=aldr_samples,
    reference=aldr_reference,
    reductions=REDUCTIONS,
    ignore_index=True,
    target_arg=1,
    prob_targets=True,
    empty=lambda: Sample((randn(0, C), torch.zeros(0, dtype=torch.long), 10.0), grad=(0,)),
    **CLASS_FIELDS,
    bad=[
        *class_bad(),
        Bad({"lam0": 0.0}, ValueError, "lam0"),
        Bad({"alpha": 0.0}, ValueError, "alpha"),
    ],
)


def aldr_twin_samples(dtype):
    return [
        Sample((randn(N, C, dtype=dtype), labels(N, classes=C), torch.arange(N)), grad=(0,)),
        Sample(
            (
                randn(N, C, dtype=dtype, seed=5),
                probs(N, C, dtype=dtype),
                torch.tensor([3, 0, 5, 1]),
            ),
            grad=(0,),
        ),
    ]


def aldr_twin(logits, target, index, **options):
    return L.ALDRKLLoss(8, **options)(logits, target, index)


def aldr_twin_reference(logits, target, index, **options):
    return aldr_reference(logits, target, torch.full((len(index),), 10.0), **options)[0]


register(
    aldr,
    dataclasses.replace(
        twin(aldr, "softmaxkit.losses.ALDRKLLoss", aldr_twin),
        samples=aldr_twin_samples,
        reference=aldr_twin_reference,
        labels={1: "target", 2: "index"},
        empty=lambda: Sample(
            (randn(0, C), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
            grad=(0,),
        ),
        bad=[
            Bad({"lam0": 0.0}, ValueError, "lam0"),
            Bad({"reduction": "avg"}, ValueError, "reduction"),
        ],
    ),
)


# ------------------------------------------------------------------- distillation


def kd_samples(dtype):
    return [
        Sample(
            (randn(N, C, dtype=dtype), randn(N, C, dtype=dtype, seed=9)),
            grad=(0, 1),
            kwargs={"detach_teacher": False},
        ),
        Sample(
            (randn(2, C, 3, dtype=dtype, seed=1), randn(2, C, 3, dtype=dtype, seed=2)),
            {"temperature": 2.0},
            grad=(0,),
        ),
    ]


def kd_reference(s, t, *, temperature=4.0, reduction="mean", detach_teacher=True):
    z, w = np64(s.movedim(1, -1)), np64(t.movedim(1, -1))
    per = distill_ref.kd(z.reshape(-1, C), w.reshape(-1, C), temperature).reshape(z.shape[:-1])
    return reduce(per, reduction)


kd = Case(
    name="softmaxkit.losses.kd_loss",
    op=L.kd_loss,
    samples=kd_samples,
    reference=kd_reference,
    reductions=REDUCTIONS,
    empty=lambda: Sample((randn(0, C), randn(0, C)), grad=(0,)),
    magnitude=(0, 1),
    beyond_max=BEYOND_RANGE,
    bad=[
        Bad({}, TypeError, "student_logits", args={0: [[1.0]]}),
        Bad({"temperature": 0.0}, ValueError, "temperature"),
        Bad({}, ValueError, "teacher_logits", args={1: torch.zeros(N, C + 1)}),
        Bad({"detach_teacher": 1}, TypeError, "detach_teacher"),
    ],
)
register(
    kd,
    twin(
        kd,
        "softmaxkit.losses.KDLoss",
        lambda s, t, **kw: L.KDLoss(**kw)(s, t),
        bad=[kd.bad[1], kd.bad[3]],
    ),
)


def nkd_samples(dtype):
    return [
        Sample(
            (randn(N, C, dtype=dtype), randn(N, C, dtype=dtype, seed=9), labels(N, classes=C)),
            grad=(0,),
        ),
        Sample(
            (
                randn(N, C, dtype=dtype, seed=3),
                randn(N, C, dtype=dtype, seed=4),
                labels(N, classes=C, seed=5),
            ),
            {"temperature": 2.0, "gamma": 1.0},
            grad=(0,),
        ),
    ]


def nkd_reference(
    s,
    t,
    target,
    *,
    temperature=1.0,
    gamma=1.5,
    reduction="mean",
    ignore_index=-100,
    detach_teacher=True,
):
    per = distill_ref.nkd(np64(s), np64(t), target.numpy(), temperature, gamma)
    return reduce(per, reduction)


nkd = Case(
    name="softmaxkit.losses.nkd_loss",
    op=L.nkd_loss,
    samples=nkd_samples,
    reference=nkd_reference,
    reductions=REDUCTIONS,
    ignore_index=True,
    target_arg=2,
    prob_targets=True,
    empty=lambda: Sample((randn(0, C), randn(0, C), torch.zeros(0, dtype=torch.long)), grad=(0,)),
    labels={2: "target"},
    magnitude=(0, 1),
    beyond_max=BEYOND_RANGE,
    bad=[
        Bad({}, TypeError, "student_logits", args={0: [[1.0]]}),
        Bad({"temperature": 0.0}, ValueError, "temperature"),
        Bad({"gamma": -1.0}, ValueError, "gamma"),
        Bad({"detach_teacher": 0}, TypeError, "detach_teacher"),
    ],
)
register(
    nkd,
    twin(
        nkd,
        "softmaxkit.losses.NKDLoss",
        lambda s, t, y, **kw: L.NKDLoss(**kw)(s, t, y),
        bad=nkd.bad[1:],
    ),
)


def uskd_samples(dtype):
    return [
        Sample(
            (randn(N, C, dtype=dtype), randn(N, C, dtype=dtype, seed=9), labels(N, classes=C)),
            grad=(0, 1),
        ),
        Sample(
            (
                randn(N, C, dtype=dtype, seed=3),
                randn(N, C, dtype=dtype, seed=4),
                probs(N, C, dtype=dtype),
            ),
            {"rank_with": "probs"},
            grad=(0, 1),
        ),
    ]


def uskd_reference(
    s,
    w,
    target,
    *,
    alpha=1.0,
    beta=0.1,
    mu=0.005,
    rank_with="official",
    reduction="mean",
    ignore_index=-100,
):
    t = np64(target) if target.is_floating_point() else target.numpy()
    per = distill_ref.uskd(np64(s), np64(w), t, alpha, beta, mu, rank_with)
    return reduce(per, reduction)


USKD_SKIP = {
    "gradcheck": "the soft target labels p_y = S_y^2 + 1 - mean_batch(S_y^2) and the Zipf "
    "ranking are detached by definition (uskd_loss docstring): not the full derivative",
    "ignore_index": "mean_batch(S_y^2) runs over the kept rows, so ignoring a row changes the "
    "others; tests/losses/test_distill.py checks ignore_index against the reference",
    "prob_targets": "a probability target gives its top two classes as labels (the official "
    "code's mixup targets), so a one-hot target also takes a zero-mass second class out of the "
    "non-target part: by definition not the index-target loss (the reference covers it)",
}
uskd = Case(
    name="softmaxkit.losses.uskd_loss",
    skip=USKD_SKIP,
    beyond_max=BEYOND_RANGE,
    op=L.uskd_loss,
    samples=uskd_samples,
    reference=uskd_reference,
    reductions=REDUCTIONS,
    ignore_index=True,
    target_arg=2,
    prob_targets=True,
    empty=lambda: Sample((randn(0, C), randn(0, C), torch.zeros(0, dtype=torch.long)), grad=(0,)),
    labels={2: "target"},
    magnitude=(0, 1),
    bad=[
        Bad({}, TypeError, "student_logits", args={0: [[1.0]]}),
        Bad({"rank_with": "x"}, ValueError, "rank_with"),
        Bad({"mu": -1.0}, ValueError, "mu"),
    ],
)

MID = 3


def uskd_twin_samples(dtype):
    return [
        Sample(
            (
                randn(N, C, dtype=dtype),
                randn(N, MID, dtype=dtype, seed=9),
                labels(N, classes=C),
                randn(C, MID, dtype=dtype, seed=10),
                randn(C, dtype=dtype, seed=11),
            ),
            grad=(0, 1),
        ),
    ]


def uskd_twin(s, mid, target, weight, bias, **kw):
    loss = L.USKDLoss(MID, C, **kw).to(s.dtype)
    with torch.no_grad():
        loss.fc.weight.copy_(weight)
        loss.fc.bias.copy_(bias)
    return loss(s, mid, target)


def uskd_twin_reference(s, mid, target, weight, bias, **kw):
    return uskd_reference(s, np64(mid) @ np64(weight).T + np64(bias), target, **kw)


register(
    uskd,
    dataclasses.replace(
        twin(uskd, "softmaxkit.losses.USKDLoss", uskd_twin),
        samples=uskd_twin_samples,
        magnitude=(0,),  # the features at 1 pass through the loss's own Linear head
        reference=lambda s, mid, target, weight, bias, **kw: uskd_reference(
            s, torch.from_numpy(np64(mid) @ np64(weight).T + np64(bias)), target, **kw
        ),
        empty=None,
        bad=[Bad({"rank_with": "x"}, ValueError, "rank_with")],
        skip={
            **uskd.skip,
            "compile": TWIN_COMPILE,
            "gradcheck": TWIN_GRADCHECK,
            "empty": "the functional's empty case covers the loss; the head is a Linear",
        },
    ),
)


# ------------------------------------------------------------------- f-divergences


def fdiv_samples(dtype):
    p, q = randn(N, C, dtype=dtype), randn(N, C, dtype=dtype, seed=9)
    p3, q3 = randn(2, 3, C, dtype=dtype, seed=1), randn(2, 3, C, dtype=dtype, seed=2)
    return [
        Sample((p, q, "kl"), grad=(0, 1)),
        Sample((p3, q3, "js"), grad=(0, 1)),
        Sample((p, q, "alpha"), {"alpha": 0.5}, grad=(0, 1)),
        Sample((p3, q3, "hellinger"), {"dim": 1}, grad=(0, 1)),
    ]


def fdiv_reference(p, q, kind, *, alpha=None, dim=-1, reduction="mean"):
    per = divergence_ref.divergence(np64(p.movedim(dim, -1)), np64(q.movedim(dim, -1)), kind, alpha)
    return reduce(per, reduction)


fdiv = Case(
    name="softmaxkit.losses.f_divergence",
    op=L.f_divergence,
    samples=fdiv_samples,
    reference=fdiv_reference,
    reductions=REDUCTIONS,
    dim=True,
    empty=lambda: Sample((randn(0, C), randn(0, C), "kl"), grad=(0, 1)),
    magnitude=(0, 1),
    beyond_max=BEYOND_RANGE,
    bad=[
        Bad({}, ValueError, "kind", args={2: "nope"}),
        Bad({"dim": 2}, ValueError, "dim"),
        Bad({}, ValueError, "q_logits", args={1: torch.zeros(N, C + 1)}),
    ],
)
register(
    fdiv,
    twin(
        fdiv,
        "softmaxkit.losses.FDivergence",
        lambda p, q, kind, **kw: L.FDivergence(kind, **kw)(p, q),
        bad=fdiv.bad[:1],
    ),
)


# ------------------------------------------------------------------------ retrieval

POSITIVES = torch.tensor(
    [[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool
)


def retrieval_samples(extra):
    def samples(dtype):
        return [
            Sample((randn(N, C, dtype=dtype), POSITIVES), dict(extra), grad=(0,)),
            Sample(
                (randn(N, C, dtype=dtype, seed=3), POSITIVES),
                {**extra, "weights": rand(N, C, dtype=dtype, seed=4)},
                grad=(0,),
            ),
        ]

    return samples


def retrieval_case(name, op, rows, extra=None, **fields):
    def ref(scores, mask, *args, weights=None, reduction="mean", **kw):
        kw.pop("n_iter", None)
        w = None if weights is None else np64(weights)
        return reduce(rows(np64(scores), mask.numpy(), *args, weights=w, **kw), reduction)

    return Case(
        name=name,
        op=op,
        samples=retrieval_samples(extra or {}),
        reference=ref,
        reductions=REDUCTIONS,
        magnitude=(0,),
        beyond_max=BEYOND_RANGE,
        empty=lambda: Sample(
            (randn(0, C), torch.zeros(0, C, dtype=torch.bool)), dict(extra or {}), grad=(0,)
        ),
        bad=[
            Bad({}, TypeError, "scores", args={0: [[1.0]]}),
            Bad({}, ValueError, "positives_mask", args={1: POSITIVES[:, :3]}),
            Bad({"reduction": "avg"}, ValueError, "reduction"),
        ],
        **fields,
    )


decoupled = retrieval_case(
    "softmaxkit.losses.decoupled_softmax_loss",
    L.decoupled_softmax_loss,
    retrieval_ref.decoupled_softmax,
)
multi = retrieval_case(
    "softmaxkit.losses.multi_positive_softmax_loss",
    L.multi_positive_softmax_loss,
    retrieval_ref.multi_positive_softmax,
    extra={"normalize": True},
)
multi.bad.append(Bad({"normalize": 1}, TypeError, "normalize"))
soft_topk = retrieval_case(
    "softmaxkit.losses.soft_topk_loss",
    lambda scores, mask, k=2, **kw: L.soft_topk_loss(scores, mask, k, **kw),
    lambda s, m, k=2, alpha=2.0, weights=None: retrieval_ref.soft_topk(s, m, k, alpha, weights),
    extra={"k": 2, "alpha": 1.5, "n_iter": 64},  # 64 steps: the threshold exact in float64
    tol={torch.float64: {"atol": 1e-9, "rtol": 1e-7}},
)


def retrieval_twin(cls, *positional):
    def op(scores, mask, weights=None, **options):
        args = [options.pop(p) for p in positional]
        return cls(*args, **options)(scores, mask, weights)

    return op


register(
    decoupled,
    multi,
    soft_topk,
    twin(
        decoupled,
        "softmaxkit.losses.DecoupledSoftmaxLoss",
        retrieval_twin(L.DecoupledSoftmaxLoss),
        bad=decoupled.bad[2:],
    ),
    twin(
        multi,
        "softmaxkit.losses.MultiPositiveSoftmaxLoss",
        retrieval_twin(L.MultiPositiveSoftmaxLoss),
        bad=multi.bad[2:],
    ),
    twin(
        soft_topk,
        "softmaxkit.losses.SoftTopKLoss",
        retrieval_twin(L.SoftTopKLoss, "k"),
        bad=soft_topk.bad[2:],
    ),
)


# ---------------------------------------------------------- normalized softmax, cosine

D = 3


def metric_samples(dtype):
    return [
        Sample(
            (randn(N, D, dtype=dtype), randn(C, D, dtype=dtype, seed=7), labels(N, classes=C)),
            {"temperature": 0.5},
            grad=(0, 1),
        ),
        Sample(
            (
                randn(N, D, dtype=dtype, seed=2),
                randn(C, D, dtype=dtype, seed=8),
                probs(N, C, dtype=dtype),
            ),
            grad=(0, 1),
        ),
    ]


def normalized_reference(
    x,
    w,
    target,
    *,
    temperature=0.05,
    eps=1e-12,
    reduction="mean",
    ignore_index=-100,
    label_smoothing=0.0,
):
    t = np64(target) if target.is_floating_point() else target.numpy()
    return reduce(metric_ref.per_sample(np64(x), np64(w), t, temperature, eps=eps), reduction)


normalized = Case(
    name="softmaxkit.losses.normalized_softmax_loss",
    op=L.normalized_softmax_loss,
    samples=metric_samples,
    reference=normalized_reference,
    reductions=REDUCTIONS,
    ignore_index=True,
    target_arg=2,
    prob_targets=True,
    num_classes=lambda s: s.args[1].shape[0],
    empty=lambda: Sample((randn(0, D), randn(C, D), torch.zeros(0, dtype=torch.long)), grad=(0, 1)),
    labels={2: "target"},
    magnitude=(0, 1),
    tol={torch.float16: {"atol": 2e-2}, torch.bfloat16: {"atol": 1e-1}},
    bad=[
        Bad({}, TypeError, "embeddings", args={0: [[1.0]]}),
        Bad({}, ValueError, "class_weights", args={1: torch.zeros(C, D + 1)}),
        Bad({"temperature": 0.0}, ValueError, "temperature"),
    ],
)


def normalized_twin(x, w, target, **kw):
    loss = L.NormalizedSoftmaxLoss(D, C, dtype=x.dtype, **kw)
    with torch.no_grad():
        loss.weight.copy_(w)
    return loss(x, target)


cosine = Case(
    name="softmaxkit.losses.cosine_logits",
    keeps_dtype=False,  # documented: float32 logits for half inputs
    op=L.cosine_logits,
    samples=lambda dtype: [s for s in metric_samples(dtype)],
    reference=lambda x, w, target=None, *, temperature=0.05, eps=1e-12: metric_ref.cosine_logits(
        np64(x), np64(w), temperature, eps
    ),
    empty=lambda: Sample((randn(0, D), randn(C, D)), grad=(0, 1)),
    magnitude=(0, 1),
    tol={torch.float16: {"atol": 2e-2}, torch.bfloat16: {"atol": 1e-1}},
    bad=normalized.bad,
)


def cosine_samples(dtype):
    return [Sample(s.args[:2], s.kwargs, s.grad) for s in metric_samples(dtype)]


register(
    normalized,
    dataclasses.replace(
        cosine,
        samples=cosine_samples,
        reference=lambda x, w, *, temperature=0.05, eps=1e-12: metric_ref.cosine_logits(
            np64(x), np64(w), temperature, eps
        ),
    ),
    twin(
        normalized,
        "softmaxkit.losses.NormalizedSoftmaxLoss",
        normalized_twin,
        bad=normalized.bad[2:],
    ),
)


# -------------------------------------------------------------------- squared hinge

hinge = class_case(
    "softmaxkit.losses.squared_hinge_loss",
    L.squared_hinge_loss,
    lambda z, t, margin=1.0: hinge_ref.squared_hinge_rows(z, t, margin),
    extra={"margin": 0.5},
    bad=[*class_bad(), Bad({"margin": -1.0}, ValueError, "margin")],
    **CLASS_FIELDS,
)
register(
    hinge, twin(hinge, "softmaxkit.losses.SquaredHingeLoss", twin_of(L.SquaredHingeLoss, "margin"))
)


# ---------------------------------------------------------------- compositional NLL


def meco_samples(dtype):
    return [
        Sample((randn(5, dtype=dtype), randn(7, dtype=dtype, seed=3)), grad=(0, 1)),
        Sample(
            (randn(2, 3, dtype=dtype, seed=1), randn(7, dtype=dtype, seed=4)),
            {"log_noise": randn(7, dtype=dtype, seed=5) - 1.0},
            grad=(0, 1),
        ),
    ]


def meco_reference(f_data, f_noise, state=None, *, log_noise=None, reduction="mean", gamma=None):
    log_q = 0.0 if log_noise is None else np64(log_noise)
    ((u, value, _, _),) = compositional_ref.meco_steps([(np64(f_data), np64(f_noise), log_q)], 0.5)
    per = -np64(f_data) + np.log(u)
    return reduce(per, reduction)


meco = Case(
    name="softmaxkit.losses.compositional_nll",
    op=L.compositional_nll,
    samples=meco_samples,
    reference=meco_reference,
    reductions=REDUCTIONS,
    empty=lambda: Sample((randn(0), randn(7)), grad=(0, 1)),
    magnitude=(0, 1),
    beyond_max=BEYOND_RANGE,
    bad=[
        Bad({}, TypeError, "f_data", args={0: [1.0]}),
        Bad({}, ValueError, "f_noise", args={1: randn(0)}),
        Bad({"reduction": "avg"}, ValueError, "reduction"),
    ],
)


def meco_twin(f_data, f_noise, *, log_noise=None, reduction="mean"):
    return L.CompositionalNLLLoss(0.5, reduction=reduction)(f_data, f_noise, log_noise)


def state_after_one_step(f_data, f_noise, gamma=0.5, **kw):
    state = L.CompositionalState(gamma, dtype=f_data.dtype)
    L.compositional_nll(f_data, f_noise, state, **kw)
    return state


STATE = "state container: updated and read by compositional_nll / CompositionalNLLLoss"
register(
    meco,
    twin(meco, "softmaxkit.losses.CompositionalNLLLoss", meco_twin, bad=meco.bad[2:]),
    Case(
        name="softmaxkit.losses.CompositionalState",
        op=state_after_one_step,
        samples=lambda dtype: meco_samples(dtype)[:1],
        no_reference=STATE,
        compile=False,
        gradcheck=False,
        noncontiguous=False,
        bad=[Bad({"gamma": 2.0}, ValueError, "gamma")],
        skip={name: STATE for name in ("dtypes", "compile", "gradcheck", "noncontiguous", "empty")},
    ),
)
