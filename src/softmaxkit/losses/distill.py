"""Distillation losses: KD (Hinton et al. 2015), NKD and USKD (Yang et al. 2023).

All three take logits in ``torch.nn.functional.cross_entropy``'s layout (classes on dim 1)
and run through the losses' engine: row block by row block, with a closed-form gradient,
so neither pass allocates more than the gradients themselves.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import torch
from torch import nn

from softmaxkit import _validation as v
from softmaxkit._ops.backend import backend_op
from softmaxkit._ops.blocks import as_rows, compute_dtype, row_blocks
from softmaxkit._ops.row_loss import (
    BufferedRowLoss,
    LossModule,
    RowLoss,
    Rows,
    check_logits,
    prepare,
    reduce,
    row_loss,
)
from softmaxkit.losses.divergence import (
    divergence_loss,
    fast_ok,
    floor_inf,
    log_probs,
    redo_rows,
    unbounded_rows,
)

RANK_MODES = ("official", "probs")


def _check_pair(student: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    check_logits("student_logits", student)
    v.check_floating(other_name, other)
    if other.shape != student.shape:
        raise ValueError(
            f"{other_name} must have the shape of student_logits {tuple(student.shape)}, "
            f"got {tuple(other.shape)}"
        )


# --------------------------------------------------------------------------------------
# KD


@backend_op
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 4.0,
    reduction: str = "mean",
    detach_teacher: bool = True,
) -> torch.Tensor:
    r"""Knowledge-distillation loss: the temperature-scaled KL divergence from the teacher.

    .. math:: \ell(s, t) = \tau^2\, \mathrm{KL}\big(\mathrm{softmax}(t/\tau) \,\|\,
              \mathrm{softmax}(s/\tau)\big)
              = \tau^2 \sum_k T_k \log\frac{T_k}{S_k}

    The :math:`\tau^2` keeps the gradient's scale independent of the temperature
    (:math:`\partial \ell / \partial s = \tau (S - T)`). The usual training objective is
    :math:`(1 - \lambda)\, \mathrm{CE} + \lambda\, \ell`; add the cross-entropy yourself.

    Paper: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
    NIPS 2014 Deep Learning Workshop, arXiv:1503.02531 (no single temperature is
    prescribed there). Default ``temperature=4.0`` is the ``KDLoss`` default of the
    official NKD/USKD code (yzd-v/cls_KD, ``mmcls/models/dis_losses/kd.py``); its shipped
    KD configs use 1.0 for every ImageNet pair and 3.0 for CIFAR-100. That ``KDLoss``
    returns the cross-entropy form :math:`-\lambda \tau^2 \sum_k T_k \log S_k` (the KL plus
    the teacher's entropy: the same gradient) with :math:`\lambda = 0.5`, and its distiller
    scales the student's CE by :math:`1 - \lambda`; here the pure KL is returned unweighted.

    Equals ``tau**2 * F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1),
    reduction="batchmean")`` for (N, C) input. Exact for any logits: a teacher class at
    ``-inf`` contributes 0; the loss is ``+inf`` only where the teacher gives a class
    positive probability and the student ``-inf``.

    Args:
        student_logits: (N, C) or (N, C, d1, ...), classes on dim 1.
        teacher_logits: the same shape.
        temperature: :math:`\tau > 0`.
        reduction: "mean" over samples (every position N x d1 x ...; for (N, C) this is
            ``kl_div``'s "batchmean", not its elementwise "mean"), "sum" or "none"
            (shape (N, d1, ...)).
        detach_teacher: stop the gradient to the teacher (default); with False the teacher
            receives :math:`\partial \ell / \partial t`.

    Returns:
        The loss in the student's dtype (half inputs are computed in float32).

    Example:
        >>> import torch
        >>> from softmaxkit.losses.distill import kd_loss
        >>> s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[3.0, 0.0, -3.0]])
        >>> kd_loss(s, t), kd_loss(s, t, temperature=1.0)
        (tensor(1.1274), tensor(0.2526))
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    v.check_reduction(reduction)
    v.check_bool("detach_teacher", detach_teacher)
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    compute = compute_dtype(student_logits, teacher_logits)
    inputs = [as_rows(teacher_logits, 1), as_rows(student_logits, 1)]
    needs = (inputs[0].requires_grad, inputs[1].requires_grad)
    loss = divergence_loss("kl", None, scale=1.0 / temperature, factor=temperature**2, needs=needs)
    losses = row_loss(loss, inputs, None, dtype=compute)
    sample_shape = student_logits.shape[:1] + student_logits.shape[2:]
    return reduce(losses, sample_shape, reduction, student_logits.dtype)


class KDLoss(LossModule):
    """Module twin of :func:`kd_loss`: ``KDLoss(temperature=4.0)(student, teacher)``."""

    shared_options = ("reduction",)

    def __init__(
        self, *, temperature: float = 4.0, reduction: str = "mean", detach_teacher: bool = True
    ) -> None:
        super().__init__(reduction=reduction)
        self.temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
        self.detach_teacher = v.check_bool("detach_teacher", detach_teacher)

    def hyperparameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature}  # detach_teacher is not shown (as before)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(
            student_logits,
            teacher_logits,
            temperature=self.temperature,
            detach_teacher=self.detach_teacher,
            **self.options(),
        )


# --------------------------------------------------------------------------------------
# NKD


def _index_rows(
    student: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[Rows, torch.Tensor]:
    """Rows of (student, target) and the class index per row; probability targets are
    reduced to their argmax (the official code's handling of mixup/cutmix labels)."""
    rows = prepare(student, target, ignore_index=ignore_index, name="student_logits")
    index = rows.index if rows.index is not None else rows.target.argmax(1)  # probs
    return rows, index


def _without(z: torch.Tensor, labels: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """A copy of the block ``z * scale`` with the ``labels`` columns set to -inf."""
    out = z * scale if scale != 1.0 else z.clone()
    return out.scatter_(1, labels, -math.inf)


def _masked_shifted(
    z: torch.Tensor, col: torch.Tensor, scale: float, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale * z`` with the ``col`` entries at -inf, minus its (new) row maximum, in
    ``out``; and that maximum (b, 1)."""
    out = torch.mul(z, scale, out=out) if scale != 1.0 else out.copy_(z)
    out.scatter_(1, col, -math.inf)
    top = out.amax(1, keepdim=True)
    return out.sub_(top), top


class _NKD(BufferedRowLoss):
    """NKD per row of the (b, C) student and teacher blocks ``zs``, ``zt`` and the class
    index ``y``: an exact kernel (:meth:`exact`, any logits) and on CPU a fast one
    (:meth:`fast`), which hands the rows it cannot get exactly to the exact one.
    ``need_t`` says whether the teacher needs a gradient."""

    buffers = 6

    def __init__(self, temperature: float, gamma: float, *, need_t: bool) -> None:
        self.temperature, self.gamma, self.need_t = temperature, gamma, need_t

    @overload
    def exact(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, grads: Literal[False]
    ) -> torch.Tensor: ...
    @overload
    def exact(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, grads: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def exact(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, grads: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        temperature, gamma = self.temperature, self.gamma
        col = y.unsqueeze(1)
        ls = log_probs(zs)
        t_y = log_probs(zt).gather(1, col).exp().detach()  # the soft target label, detached
        s_y = ls.gather(1, col)
        target_part = torch.where(t_y > 0, -t_y * s_y, 0.0).squeeze(1)
        ns = log_probs(_without(zs, col, 1.0 / temperature))  # log S-hat
        log_nt = log_probs(_without(zt, col, 1.0 / temperature))
        nt = log_nt.exp()  # T-hat
        floored = floor_inf(ns)
        cross = (nt * floored).sum(1, keepdim=True)  # sum T-hat log S-hat; 0 log 0 = 0
        cross = cross.masked_fill(
            unbounded_rows(floor_inf(log_nt) - floored).unsqueeze(1), -math.inf
        )
        weight = gamma * temperature**2
        loss = target_part - weight * cross.squeeze(1)
        if not grads:
            return loss
        grad_s = t_y * ls.exp()
        grad_s.scatter_add_(1, col, -t_y)
        grad_s -= (gamma * temperature) * (nt - ns.exp() * nt.sum(1, keepdim=True))
        grad_t = -(gamma * temperature) * nt * (floored - cross)
        return grad_s, grad_t

    @overload
    def fast(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, g: None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def fast(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]: ...
    def fast(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """NKD of a block by the plain closed forms: the (b,) loss (``g`` None) or ``g``
        times the gradients (student, teacher or None); and the rows where that is not
        exact (only rows holding a non-finite logit or no finite non-target one), for the
        exact kernel.

        With ``a, b`` the non-target logits over tau shifted to maximum 0: T-hat =
        softmax(a), S-hat = softmax(b), log S-hat = b + log max S-hat, and the non-target
        log-sum-exps ``lse_a = max - log max T-hat`` (resp. S-hat). At tau = 1 the full
        rows' log-sum-exps follow from these: log S_y = -log(1 + exp(lse_b - s_y)),
        T_y = sigmoid(t_y - lse_a), 1 - S_y = sigmoid(lse_b - s_y), and S = S-hat (1 - S_y)
        off the target.
        """
        temperature, gamma, need_t = self.temperature, self.gamma, self.need_t
        ws = self.block_work(zs)
        scale, col = 1.0 / temperature, y.unsqueeze(1)
        a, top_a = _masked_shifted(zt, col, scale, ws[0])
        nt = torch.softmax(a, 1, out=ws[1])  # T-hat (0 at y)
        log_top_nt = nt.amax(1, keepdim=True).log_()
        b, top_b = _masked_shifted(zs, col, scale, ws[2])
        sh = torch.softmax(b, 1, out=ws[3])  # S-hat (0 at y)
        log_top_sh = sh.amax(1, keepdim=True).log_()
        s_y, t_y_logit = zs.gather(1, col), zt.gather(1, col)
        if scale == 1.0:
            lse_s = top_b - log_top_sh  # log sum_(k != y) exp(s_k)
            t_y = torch.sigmoid(t_y_logit - (top_a - log_top_nt))
        else:
            t_y = torch.log_softmax(zt, 1, out=ws[4]).gather(1, col).exp_()
        weight = gamma * temperature
        if g is None or need_t:
            ns = b.add_(log_top_sh).scatter_(1, col, 0.0)  # log S-hat, finite at y (T-hat_y = 0)
            cross = torch.mul(ns, nt, out=ws[5]).sum(1, keepdim=True)  # sum T-hat log S-hat
        if g is None:
            if scale == 1.0:
                log_s_y = -torch.logaddexp(lse_s - s_y, torch.zeros_like(s_y))  # -softplus
            else:
                log_s_y = torch.log_softmax(zs, 1, out=ws[4]).gather(1, col)
            loss = (-t_y * log_s_y - (weight * temperature) * cross).squeeze(1)
            return loss, ~torch.isfinite(loss)
        if scale == 1.0:
            rest = torch.sigmoid(lse_s - s_y)  # 1 - S_y, without cancellation
            grad_s = sh.mul_(g * (t_y * rest + weight)).addcmul_(nt, g, value=-weight)
            grad_s.scatter_(1, col, -(t_y * rest * g))
        else:
            grad_s = torch.softmax(zs, 1, out=ws[4]).mul_(t_y * g)
            grad_s.addcmul_(sh, g, value=weight).addcmul_(nt, g, value=-weight)
            grad_s.scatter_add_(1, col, -(t_y * g))
        bad = ~torch.isfinite(grad_s.sum(1))
        grad_t: torch.Tensor | None = None
        if need_t:  # -gamma tau T-hat (log S-hat - cross)
            grad_t = ns.sub_(cross).mul_(nt).mul_(g * -weight)
            bad |= ~torch.isfinite(cross.squeeze(1))
        return grad_s, grad_t, bad

    def value(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not fast_ok(zs):
            return self.exact(zs, zt, y, grads=False)
        loss, bad = self.fast(zs, zt, y)
        redo_rows(bad, [loss], lambda r: [self.exact(zs[r], zt[r], y[r], grads=False)])
        return loss

    def grad(
        self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = g.unsqueeze(1)
        grad_t: torch.Tensor | None
        if not fast_ok(zs):
            grad_s, grad_t = self.exact(zs, zt, y, grads=True)
            return grad_s * g, grad_t * g
        grad_s, grad_t, bad = self.fast(zs, zt, y, g)

        def exact(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            grad_s, grad_t = self.exact(zs[r], zt[r], y[r], grads=True)
            return grad_s * g[r], grad_t * g[r]

        redo_rows(bad, [grad_s, grad_t], exact)
        return grad_s, grad_t


@backend_op
def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
    reduction: str = "mean",
    ignore_index: int = -100,
    detach_teacher: bool = True,
) -> torch.Tensor:
    r"""Normalized knowledge distillation (NKD): a target term and a KD term over the
    *renormalised* non-target classes.

    .. math:: \ell(s, t, y) = -T_y \log S_y
              - \gamma \tau^2 \sum_{k \ne y} \hat T_k \log \hat S_k

    with :math:`S = \mathrm{softmax}(s)`, :math:`T = \mathrm{softmax}(t)` at temperature
    1, :math:`T_y` treated as a constant (detached), and :math:`\hat S, \hat T` the
    softmax over the C - 1 non-target logits at temperature :math:`\tau`, i.e. the
    non-target probabilities divided by :math:`1 - S_y` (resp. :math:`1 - T_y`). The paper
    splits the KD cross-entropy (at temperature 1) as

    .. math:: -\sum_k T_k \log S_k = -T_y \log S_y - (1 - T_y) \log(1 - S_y)
              - (1 - T_y) \sum_{k \ne y} \hat T_k \log \hat S_k:

    KD's non-target part pulls :math:`S_k` towards :math:`T_k`, which the student's
    non-target mass :math:`1 - S_y \ne 1 - T_y` cannot reach, and is weighted down by
    :math:`1 - T_y`. NKD keeps the target term and the normalised non-target term, which is
    stationary exactly when :math:`\hat S = \hat T`, whatever the target probabilities.

    Paper: Z. Yang, A. Zeng, Z. Li, T. Zhang, C. Yuan, Y. Li, "From Knowledge Distillation
    to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized
    Soft Labels", ICCV 2023, arXiv:2303.13005. Official code: yzd-v/cls_KD,
    ``mmcls/models/dis_losses/nkd.py`` (``NKDLoss``). Defaults ``temperature=1.0``,
    ``gamma=1.5`` are the class defaults and the ImageNet ResNet configs; the DeiT configs
    use gamma 1.0, the CIFAR-100 config temperature 3.0 and gamma 3.5.

    This returns only the NKD terms. The paper's training loss is CE + NKD: the official
    distiller adds the student's ordinary cross-entropy, so add
    ``F.cross_entropy(student_logits, target)`` yourself. The official loss does not detach
    :math:`\hat T` (its distiller runs the teacher under ``no_grad``); here
    ``detach_teacher=True`` detaches the whole teacher, and ``detach_teacher=False`` lets
    the gradient of the non-target term reach the teacher as the official loss would
    (:math:`T_y` is always detached, as there).

    Probability targets (mixup/cutmix labels) are accepted and reduced to their argmax
    class, as the official loss does; there is no ``label_smoothing`` because only the
    target's class is used. Exact for any logits: a class at ``-inf`` for both models
    contributes nothing; the loss is ``+inf`` only where the teacher gives positive
    probability to a class the student puts at ``-inf``.

    Args:
        student_logits: (N, C) or (N, C, d1, ...), classes on dim 1.
        teacher_logits: the same shape.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        temperature: :math:`\tau > 0` of the non-target term.
        gamma: :math:`\gamma \ge 0`, the non-target term's weight.
        reduction: "mean" over non-ignored samples (0 when all are ignored), "sum", "none".
        ignore_index: target value that contributes nothing (index targets only).
        detach_teacher: stop every gradient to the teacher (default).

    Returns:
        The loss in the student's dtype.

    Example:
        >>> import torch
        >>> from softmaxkit.losses.distill import nkd_loss
        >>> s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[3.0, 0.0, -3.0]])
        >>> nkd_loss(s, t, torch.tensor([0]))
        tensor(0.9284)
        >>> nkd_loss(s, t, torch.tensor([0]), gamma=0.0)  # the target term alone
        tensor(0.3874)
    """
    _check_pair(student_logits, teacher_logits, "teacher_logits")
    temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
    gamma = v.check_number("gamma", gamma, low=0.0)
    v.check_reduction(reduction)
    v.check_bool("detach_teacher", detach_teacher)
    rows, index = _index_rows(student_logits, target, ignore_index)
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    compute = compute_dtype(student_logits, teacher_logits)
    inputs = [rows.logits, as_rows(teacher_logits, 1)]
    loss = _NKD(temperature, gamma, need_t=inputs[1].requires_grad)
    losses = row_loss(loss, inputs, index, kept=rows.kept, dtype=compute)
    return reduce(losses, rows, reduction, student_logits.dtype)


class NKDLoss(LossModule):
    """Module twin of :func:`nkd_loss`: ``NKDLoss(temperature=1.0, gamma=1.5)(student,
    teacher, target)``."""

    shared_options = ("reduction", "ignore_index")

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        gamma: float = 1.5,
        reduction: str = "mean",
        ignore_index: int = -100,
        detach_teacher: bool = True,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        self.temperature = v.check_number("temperature", temperature, low=0.0, low_open=True)
        self.gamma = v.check_number("gamma", gamma, low=0.0)
        self.detach_teacher = v.check_bool("detach_teacher", detach_teacher)

    def hyperparameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "gamma": self.gamma}

    def extra_repr(self) -> str:  # the repr of before (a test checks it): no ignore_index
        shown = {**self.hyperparameters(), "reduction": self.reduction}
        return ", ".join(f"{k}={val!r}" for k, val in shown.items())

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        return nkd_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            gamma=self.gamma,
            detach_teacher=self.detach_teacher,
            **self.options(),
        )


# --------------------------------------------------------------------------------------
# USKD


def _target_probs(x2: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """softmax(x2) at ``labels`` (rows, K), computed block by block without a gradient."""
    out = torch.empty(labels.shape, dtype=dtype, device=x2.device)
    with torch.no_grad():
        for b in row_blocks(*x2.shape):
            out[b] = log_probs(x2[b].to(dtype)).gather(1, labels[b]).exp()
    return out


def _top_two(probs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The two largest values of each row and their classes, by a stable descending sort
    (ties: the lower class first), block by block."""
    k = min(2, probs.shape[1])
    values = torch.empty(probs.shape[0], k, dtype=dtype, device=probs.device)
    labels = torch.empty(probs.shape[0], k, dtype=torch.long, device=probs.device)
    for b in row_blocks(*probs.shape):
        top = torch.sort(probs[b], dim=1, descending=True, stable=True)
        values[b], labels[b] = top.values[:, :k], top.indices[:, :k]
    return values, labels


class _USKD(RowLoss):
    """USKD per row of the (b, C) student and weak-head blocks ``z``, ``w``, with the target
    ``t`` and the extras ``labels`` (b, K) and ``soft_target`` (b, K) (the soft target
    labels, detached); the weights ``alpha, beta, mu`` and ``rank_probs`` (the "probs"
    ranking)."""

    def __init__(self, alpha: float, beta: float, mu: float, rank_probs: bool) -> None:
        self.alpha, self.beta, self.mu, self.rank_probs = alpha, beta, mu, rank_probs

    def value(
        self,
        z: torch.Tensor,
        w: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        soft_target: torch.Tensor,
    ) -> torch.Tensor:
        return self._parts(z, w, t, labels, soft_target, grads=False)

    def grad(
        self, z: torch.Tensor, w: torch.Tensor, t: torch.Tensor, *rest: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels, soft_target, g = rest  # the extras, then the output's gradient
        grad_z, grad_w = self._parts(z, w, t, labels, soft_target, grads=True)
        g = g.unsqueeze(1)
        return grad_z * g, grad_w * g

    @overload
    def _parts(
        self,
        z: torch.Tensor,
        w: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        soft_target: torch.Tensor,
        *,
        grads: Literal[False],
    ) -> torch.Tensor: ...
    @overload
    def _parts(
        self,
        z: torch.Tensor,
        w: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        soft_target: torch.Tensor,
        *,
        grads: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def _parts(
        self,
        z: torch.Tensor,
        w: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        soft_target: torch.Tensor,
        *,
        grads: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        alpha, beta, mu, rank_probs = self.alpha, self.beta, self.mu, self.rank_probs
        classes = z.shape[1]
        lz, lw = log_probs(z), log_probs(w)
        # 1. soft target label: -sum_j p_j log S_(label j)
        picked = lz.gather(1, labels)
        target_part = -torch.where(soft_target != 0, soft_target * picked, 0.0).sum(1)
        # 2. weak supervision: mu * CE(w, 0.9 y + 0.1 / C), y one-hot (or the probability target)
        probs = t.dtype.is_floating_point
        on_label = (t * lw).sum(1) if probs else lw.gather(1, labels).sum(1)
        weak_part = -mu * (0.9 * on_label + (0.1 / classes) * lw.sum(1))
        # 3. Zipf soft non-target labels from the rank of the (detached) score
        with torch.no_grad():
            pw = lw.exp()
            xs = lz.exp() if rank_probs else lz
            score = pw / (1 - pw.gather(1, labels).sum(1, keepdim=True) + 1e-6) + xs / (
                1 - xs.gather(1, labels).sum(1, keepdim=True) + 1e-6
            )
            order = torch.sort(score, dim=1, descending=True, stable=True).indices
            positions = torch.arange(1, classes + 1, device=z.device).expand_as(order)
            rank = torch.empty_like(order).scatter_(1, order, positions)
            zipf = rank.to(z.dtype).reciprocal_().scatter_(1, labels, 0.0)
            low = torch.finfo(z.dtype).min
            zipf *= (floor_inf(lz) - low).clamp_(max=1.0)  # 0 for the classes the student rules out
            soft = zipf / zipf.sum(1, keepdim=True).clamp(min=torch.finfo(z.dtype).tiny)
        ns = log_probs(_without(z, labels))
        non_target_part = -(soft * floor_inf(ns)).sum(1)
        if not grads:
            return alpha * target_part + beta * non_target_part + weak_part
        grad_z = lz.exp() * (alpha * soft_target.sum(1, keepdim=True))
        grad_z.scatter_add_(1, labels, -alpha * soft_target)
        grad_z += beta * (ns.exp() * soft.sum(1, keepdim=True) - soft)
        label_mass = t.sum(1, keepdim=True) if probs else float(labels.shape[1])
        grad_w = pw * (mu * (0.9 * label_mass + 0.1)) - mu * 0.1 / classes
        if probs:
            grad_w -= (0.9 * mu) * t
        else:
            grad_w.scatter_add_(
                1, labels, torch.full(labels.shape, -0.9 * mu, dtype=z.dtype, device=z.device)
            )
        return grad_z, grad_w


@backend_op
def uskd_loss(
    student_logits: torch.Tensor,
    weak_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    mu: float = 0.005,
    rank_with: str = "official",
    reduction: str = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Universal self-knowledge distillation (USKD): NKD with soft labels made by the
    student itself, no teacher.

    .. math:: \ell = \alpha\, \ell_t + \beta\, \ell_{nt} + \ell_{weak}

    * soft target label: :math:`\ell_t = -p_y \log S_y` with :math:`S = \mathrm{softmax}(z)`
      and :math:`p_y = S_y^2 + 1 - \mathrm{mean}_{batch}(S_y^2)` (detached; the mean is
      over the non-ignored rows);
    * weak supervision: :math:`\ell_{weak} = -\mu \sum_k (0.9\, [k = y] + 0.1 / C)
      \log \mathrm{softmax}(w)_k` for the ``weak_logits`` :math:`w` of a linear head on an
      intermediate feature (:class:`USKDLoss` owns that head);
    * soft non-target labels: rank the classes by the score
      :math:`r_k = W_k / (1 - W_y + 10^{-6}) + X_k / (1 - X_y + 10^{-6})` with
      :math:`W = \mathrm{softmax}(w)`, give rank :math:`n` (1 = largest, the target
      included) the Zipf label :math:`1/n`, drop the target and renormalise over the
      non-targets to :math:`\hat z` (detached);
      :math:`\ell_{nt} = -\sum_{k \ne y} \hat z_k \log \hat S_k`, with :math:`\hat S` the
      softmax over the non-target logits.

    ``rank_with`` chooses :math:`X`. "official" (default) reproduces the official code,
    where :math:`X` is the student's **log**-softmax (the variable holding the
    probabilities was overwritten by the log-probabilities before the rank is computed),
    so :math:`X_y = \log S_y`; "probs" uses the probabilities :math:`X = S`, i.e. the sum
    of the normalised non-target probabilities of both heads, as the paper describes the
    ranking. The sort is stable (ties keep class order; the official ``torch.sort`` leaves
    tie order to the implementation).

    Paper: Z. Yang, A. Zeng, Z. Li, T. Zhang, C. Yuan, Y. Li, "From Knowledge Distillation
    to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized
    Soft Labels", ICCV 2023, arXiv:2303.13005. Official code: yzd-v/cls_KD,
    ``mmcls/models/dis_losses/uskd.py``. Defaults ``alpha=1.0, beta=0.1, mu=0.005`` are the
    class defaults and every ImageNet config; the CIFAR-100 config uses
    ``alpha=0.1, beta=0.1, mu=0.1``. The official distiller also adds the student's
    ordinary cross-entropy: the paper's objective is CE + USKD.

    Probability targets (mixup/cutmix labels) follow the official code: the two largest
    label values :math:`v_1, v_2` (stable sort) both act as targets, with
    :math:`p_j = S_{y_j}^2 + v_j - \mathrm{mean}(S_{y_j}^2)` (0 where :math:`v_j = 0`),
    the weak target is :math:`0.9\, t + 0.1 / C`, :math:`W_y, X_y` are sums over the two
    classes, and both are dropped from the non-target labels. There is no
    ``label_smoothing``: the weak target already fixes its own.

    Departure from the official code, only for ``-inf`` student logits: a class the
    student puts at ``-inf`` (impossible) gets the non-target label 0 instead of a Zipf
    label (which would make the loss infinite). The Zipf labels are built on the input's
    device (the official vector is hard-coded to CUDA).

    Args:
        student_logits: (N, C) or (N, C, d1, ...), classes on dim 1.
        weak_logits: the weak head's logits, the same shape.
        target: class indices (N,) or (N, d1, ...), or probabilities with the logits' shape.
        alpha, beta, mu: the weights of the three terms (>= 0).
        rank_with: "official" or "probs" (see above).
        reduction: "mean" over non-ignored samples (0 when all are ignored), "sum", "none".
        ignore_index: target value that contributes nothing (index targets only).

    Returns:
        The loss in the student's dtype; gradients reach ``student_logits`` (target and
        non-target terms) and ``weak_logits`` (weak term).

    Example:
        >>> import torch
        >>> from softmaxkit.losses.distill import uskd_loss
        >>> z = torch.tensor([[4.0, 2.0, 1.9, 0.0, -3.0]])
        >>> w = torch.tensor([[0.0, -2.0, 0.5, 1.0, 0.0]])
        >>> y = torch.tensor([0])
        >>> uskd_loss(z, w, y), uskd_loss(z, w, y, rank_with="probs")  # the two rankings differ
        (tensor(0.4464), tensor(0.4593))
    """
    _check_pair(student_logits, weak_logits, "weak_logits")
    loss = _uskd_config(alpha, beta, mu, rank_with)
    v.check_reduction(reduction)
    rows = prepare(student_logits, target, ignore_index=ignore_index, name="student_logits")
    compute = compute_dtype(student_logits, weak_logits)
    if rows.index is not None:
        labels = rows.index.unsqueeze(1)
        values = torch.ones(labels.shape, dtype=compute, device=labels.device)
    else:
        values, labels = _top_two(rows.target, compute)  # probs
    if rows.logits.shape[1] == 0:  # no classes: nothing to rank
        return reduce(rows.logits.sum(1) * 0, rows, reduction, student_logits.dtype)
    squared = _target_probs(rows.logits, labels, compute).square()
    if rows.kept is not None:
        count = rows.kept.sum().clamp(min=1)
        mean = (squared * rows.kept.unsqueeze(1)).sum(0, keepdim=True) / count
    else:
        mean = squared.sum(0, keepdim=True) / max(squared.shape[0], 1)
    soft_target = torch.where(values == 0, 0.0, squared + values - mean)
    losses = row_loss(
        loss,
        [rows.logits, as_rows(weak_logits, 1)],
        rows.target,
        kept=rows.kept,
        extras=[labels, soft_target],
        dtype=compute,
    )
    return reduce(losses, rows, reduction, student_logits.dtype)


def _uskd_config(alpha: object, beta: object, mu: object, rank_with: object) -> _USKD:
    """The validated hyperparameters as the row loss."""
    alpha = v.check_number("alpha", alpha, low=0.0)
    beta = v.check_number("beta", beta, low=0.0)
    mu = v.check_number("mu", mu, low=0.0)
    v.check_choice("rank_with", rank_with, RANK_MODES)
    return _USKD(alpha, beta, mu, rank_with == "probs")


class USKDLoss(LossModule):
    """USKD (:func:`uskd_loss`) with its weak-supervision head: ``fc = Linear(channel,
    num_classes)`` maps the intermediate feature to the weak logits and is trained by the
    loss's weak-supervision term (it belongs in the optimizer with the model).

    ``forward(student_logits, mid_features, target)``: ``mid_features`` is (N, channel) or
    (N, channel, d1, ...) matching the logits' (N, C, d1, ...). (The official
    ``USKDLoss.forward`` takes ``(fea_mid, logit_s, gt_label)``; the order here follows the
    other losses.) In the official configs the feature is the globally pooled output of the
    second-to-last stage (ResNet-18: ``channel=256``) or, for DeiT-T, a token of an
    intermediate block (``channel=192``).

    Example:
        >>> import torch
        >>> from softmaxkit.losses.distill import USKDLoss
        >>> _ = torch.manual_seed(0)
        >>> loss_fn = USKDLoss(8, 5)
        >>> logits, features = torch.randn(4, 5, requires_grad=True), torch.randn(4, 8)
        >>> loss = loss_fn(logits, features, torch.tensor([0, 1, 2, 3]))
        >>> loss.backward()
        >>> loss_fn.fc.weight.grad.shape
        torch.Size([5, 8])
    """

    shared_options = ("reduction", "ignore_index")

    def __init__(
        self,
        channel: int,
        num_classes: int,
        *,
        alpha: float = 1.0,
        beta: float = 0.1,
        mu: float = 0.005,
        rank_with: str = "official",
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        v.check_int("channel", channel, low=1)
        v.check_int("num_classes", num_classes, low=1)
        checked = _uskd_config(alpha, beta, mu, rank_with)
        self.alpha, self.beta, self.mu = checked.alpha, checked.beta, checked.mu
        self.rank_with = rank_with
        self.fc = nn.Linear(channel, num_classes)

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "mu": self.mu, "rank_with": self.rank_with}

    def forward(
        self, student_logits: torch.Tensor, mid_features: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        v.check_floating("mid_features", mid_features)
        channel = self.fc.in_features
        if mid_features.ndim < 2 or mid_features.shape[1] != channel:
            raise ValueError(
                f"mid_features must have shape (N, {channel}) or (N, {channel}, d1, ...), "
                f"got {tuple(mid_features.shape)}"
            )
        weak = self.fc(mid_features.movedim(1, -1)).movedim(-1, 1)
        return uskd_loss(
            student_logits,
            weak,
            target,
            alpha=self.alpha,
            beta=self.beta,
            mu=self.mu,
            rank_with=self.rank_with,
            **self.options(),
        )
