"""PALM's training loss (Lu, Gong, Wang, Xue, Yao & Moore 2024).

"Learning with Mixture of Prototypes for Out-of-Distribution Detection", ICLR 2024,
arXiv:2402.02653. Official code: jeff024/PALM (``util/loss_functions.py::PALM``; defaults
in ``util/loaders/args_loader.py`` and ``runner.sh``).

PALM trains an encoder and a projection head so that each class is a mixture of
``cache_size`` prototypes on the unit sphere. Per batch:

1. **Assignment.** ``Q = Sinkhorn(exp(z P^T / eps))`` balances the samples over the
   prototypes; each sample keeps its own class's prototypes, and of those the ``k`` with
   the largest ``Q`` (top-k).
2. **EMA update.** The prototypes move towards the weighted mean of their assigned
   features, ``P <- normalize(m P + (1 - m) U^T z)``.
3. **MLE loss.** With the assignment recomputed on the new prototypes,
   ``-mean_i [sum_p w_ip z_i . p / tau - log sum_p exp(z_i . p / tau)]``.
4. **Prototype-contrastive loss.** SupCon over the prototypes (same class = positive).

At test time PALM scores penultimate features with SSD+ (:class:`SSDScore`).

This module follows the official code's arithmetic, quirks included (each one stated in
:class:`PALMLoss`); its EMA update is explicit: the buffer is written under ``no_grad``,
only in training mode or by :meth:`PALMLoss.update_prototypes`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit.ood._detector import normalize_rows

__all__ = ["PALMLoss", "PALMLossOutput"]

#: ``F.normalize(p=1)``'s floor on the L1 norm (its ``eps``), which the official code's
#: Sinkhorn and weight normalisations inherit; kept here, in the log domain
_L1_FLOOR = 1e-12
_LOG_L1_FLOOR = math.log(_L1_FLOOR)
#: the prototype-contrastive loss's temperature, hard-coded in the official ``proto_contra``
PCON_TEMPERATURE = 0.5


class PALMLossOutput(NamedTuple):
    """What :class:`PALMLoss` returns: 0-d tensors in the features' dtype.

    ``loss = mle + lambda_pcon * proto_contra`` is the one to differentiate; ``mle`` and
    ``proto_contra`` (unweighted) are its parts, for logging.
    """

    loss: torch.Tensor
    mle: torch.Tensor
    proto_contra: torch.Tensor


def _log_l1_normalize(log_x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(F.normalize(x, p=1, dim=dim))`` of ``x = exp(log_x) >= 0``: ``x`` divided by
    ``max(sum x, 1e-12)`` (torch's floor, so a slice of total below 1e-12 is left as it
    is, as in the official code)."""
    return log_x - torch.logsumexp(log_x, dim, keepdim=True).clamp_min(_LOG_L1_FLOOR)


def _log_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """``log Q`` (N, K) of the official ``sinkhorn`` for the (N, K) dot products ``scores``.

    The official code, with ``Q`` (K, N) = ``exp(scores / eps)^T``: ``Q /= sum Q``, then
    ``iterations`` times ``Q = normalize_rows_L1(Q) / K; Q = normalize_cols_L1(Q) / N``,
    then ``Q * N`` transposed. Here every step is one log-sum-exp (no overflow for any
    ``eps``), with ``F.normalize``'s 1e-12 floor kept.
    """
    n, k = scores.shape
    log_q = scores / epsilon
    log_q = log_q - torch.logsumexp(log_q.reshape(-1), 0)
    for _ in range(iterations):
        log_q = _log_l1_normalize(log_q, 0) - math.log(k)  # each prototype holds 1/K
        log_q = _log_l1_normalize(log_q, 1) - math.log(n)  # each sample holds 1/N
    return log_q + math.log(n)


def _proto_contra(protos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The official ``proto_contra``: SupCon over the (K, d) prototypes at temperature 0.5,
    positives = the other prototypes of the same class, the logits shifted by their
    (detached) row maximum, the log-sum-exp over every prototype but itself."""
    p = F.normalize(protos, dim=1)
    logits = p @ p.T / PCON_TEMPERATURE
    logits = logits - logits.detach().amax(1, keepdim=True)
    self_mask = torch.eye(len(p), dtype=torch.bool, device=p.device)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    # F.normalize(mask, p=1): mean over the positives; a row without positives gives 0
    count = positive.sum(1).clamp_min(1).to(logits.dtype)
    pos = (logits * positive).sum(1) / count
    neg = torch.logsumexp(logits.masked_fill(self_mask, -math.inf), 1)
    return (neg - pos).mean()


class PALMLoss(nn.Module):
    r"""PALM's mixture-of-prototypes training loss, as the official code computes it.

    Lu et al., "Learning with Mixture of Prototypes for Out-of-Distribution Detection",
    ICLR 2024, arXiv:2402.02653; official code jeff024/PALM,
    ``util/loss_functions.py::PALM``.

    **State.** A buffer ``prototypes`` (K, d), ``K = num_classes * cache_size``, prototype
    ``p`` of class ``p mod num_classes``, initialised as the official code: uniform in
    [0, 1)^d (the global torch RNG), L2-normalised. It is part of ``state_dict``.

    **Forward.** ``z`` (N, d) are the projected features of all views (view-major, as the
    official ``torch.cat(torch.unbind(features, 1))``), ``y`` their labels, ``P`` the
    prototypes, ``c(p)`` the class of prototype ``p``.

    1. Assignment (no gradient): :math:`Q = \mathrm{Sinkhorn}_\varepsilon(z P^\top)`
       (N, K), computed in the log domain (``epsilon`` 0.05, ``sinkhorn_iterations`` 3).
       Sample ``i`` keeps the ``k`` prototypes of class :math:`y_i` with the largest
       :math:`Q_{ip}`, the set :math:`T_i`.
    2. EMA update (training mode only): with :math:`w_{ip} = Q_{ip} [p \in T_i]`
       L1-normalised over ``p``, then over ``i`` (the matrix ``U``),

       .. math:: P \leftarrow \mathrm{normalize}(m P + (1 - m) U^\top z), \quad m =
                 \text{proto\_m}.

       The buffer is written under ``no_grad`` before the loss is computed; ``Q`` is then
       recomputed with the new ``P``.
    3. MLE loss, with :math:`\hat w_{ip} = Q_{ip} [p \in T_i] / \sum_{q \in T_i} Q_{iq}`
       (the new ``Q``, the old :math:`T_i`) and :math:`\ell_{ip} = z_i \cdot p / \tau`
       (``P`` detached):

       .. math:: \mathcal{L}_{\mathrm{MLE}} = -\frac{1}{N} \sum_i \Big[\sum_p \hat w_{ip}
                 \ell_{ip} - \log \sum_{p=1}^{K} e^{\ell_{ip}}\Big].

    4. Prototype-contrastive loss, with :math:`s_{pq} = p \cdot q / 0.5` (normalised
       prototypes) and :math:`A(p)` the other prototypes of class :math:`c(p)`:

       .. math:: \mathcal{L}_{\mathrm{pcon}} = -\frac{1}{K} \sum_p \Big[\frac{1}{|A(p)|}
                 \sum_{q \in A(p)} s_{pq} - \log \sum_{q \ne p} e^{s_{pq}}\Big].

    The loss is :math:`\mathcal{L}_{\mathrm{MLE}} + \lambda_{\mathrm{pcon}}
    \mathcal{L}_{\mathrm{pcon}}`. Gradients reach ``features`` through the MLE logits and,
    in training mode, through the updated prototypes of :math:`\mathcal{L}_{\mathrm{pcon}}`
    (the ``(1 - m) U^T z`` term: the only way the prototype-contrastive loss reaches the
    encoder, as in the official code; ``U``, ``Q`` and the MLE's ``P`` carry none).

    **Defaults** are the official run's (``args_loader.py`` / ``runner.sh``); where the
    official class's own default differs it is given in brackets: ``cache_size`` 6,
    ``k`` 5 [0], ``proto_m`` 0.999 [0.99], ``temperature`` 0.1, ``epsilon`` 0.05,
    ``sinkhorn_iterations`` 3, ``lambda_pcon`` 1, ``feat_dim`` 128 [``n_protos`` 1000;
    the run passes ``num_classes * cache_size``]. The official training uses 2 views,
    batch 512, SGD lr 0.5, 500 epochs.

    **Deliberate differences from the official code** (values equal wherever both are
    finite, tested against a float64 transcription of the official code):

    - The EMA update is explicit: the buffer changes only in training mode (``eval()``
      computes the loss with the current prototypes and does not update them, which equals
      the official loss at ``proto_m = 1``), or through :meth:`update_prototypes`. The
      official code updates the prototypes as a side effect of every forward.
    - Sinkhorn in the log domain, and ``torch.logsumexp`` for the MLE denominator (the
      official code exponentiates without a shift and renormalises the prototypes when
      ``sum Q`` overflows). ``F.normalize``'s 1e-12 floor on every L1 normalisation is kept
      (it leaves a prototype, or a sample's class weights, of total mass below 1e-12
      unnormalised, which happens with ``epsilon`` 0.05 when a prototype is far from the
      whole batch).
    - ``k = 0`` (the official class default) uses all ``cache_size`` prototypes of the
      class, as the official "original" branch; ``k > cache_size`` is clamped to
      ``cache_size``, as the official ``min(k, cache_size)``.
    - The loss's top-k set is the assignment's (pre-update) one, as the official code (it
      takes the top-k of the pre-update weights again); the two differ only if a selected
      weight underflows to exactly 0.
    - ``normalize=True`` (default) L2-normalises ``features`` first (the official model
      returns ``F.normalize(head(encoder(x)))``; normalising again changes nothing, and the
      gradient reaching the head is the same). ``normalize=False`` takes them as given,
      the official loss's arithmetic.
    - ``features`` of float16/bfloat16 are computed in float32 (the prototypes stay in the
      buffer's dtype); the outputs are in the features' dtype. The official code runs
      under CUDA autocast.
    - An empty batch gives ``mle = 0`` (the official mean over no rows is NaN) and no update.

    Paper vs code (the code is followed): the paper's MLE puts the mixture inside the log
    with a ``w``-weighted denominator; the code uses a weighted sum of logits (a Jensen
    bound) over an unweighted denominator of all ``K`` prototypes; the paper's
    prototype-contrastive loss has its own temperature, the code a fixed 0.5.

    Args:
        num_classes: C (at least 2).
        feat_dim: d, the projected features' width (default 128).
        cache_size: prototypes per class (default 6).
        k: prototypes each sample is assigned to (default 5; 0 = all of its class).
        proto_m: EMA momentum m in [0, 1] (default 0.999).
        temperature: tau of the MLE logits (default 0.1).
        epsilon: Sinkhorn's entropic regularisation (default 0.05).
        sinkhorn_iterations: Sinkhorn's row/column sweeps (default 3).
        lambda_pcon: weight of the prototype-contrastive loss (default 1).
        normalize: L2-normalise ``features`` first (default True).

    Shape:
        - features: (B, V, d) (V views, the official layout) or (B, d) (one view), floating.
        - labels: (B,) class indices in [0, C), any integer dtype.
        - output: :class:`PALMLossOutput` of 0-d tensors in the features' dtype.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> crit = PALMLoss(num_classes=3, feat_dim=8)
        >>> crit.prototypes.shape
        torch.Size([18, 8])
        >>> feats = torch.randn(4, 2, 8, requires_grad=True)  # 4 samples, 2 views
        >>> out = crit(feats, torch.tensor([0, 1, 2, 0]))
        >>> out.loss.backward()
        >>> bool(torch.isclose(out.loss, out.mle + out.proto_contra))
        True
    """

    prototypes: torch.Tensor
    prototype_labels: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int = 128,
        *,
        cache_size: int = 6,
        k: int = 5,
        proto_m: float = 0.999,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        lambda_pcon: float = 1.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = V.check_int("num_classes", num_classes, low=2)
        self.feat_dim = V.check_int("feat_dim", feat_dim, low=1)
        self.cache_size = V.check_int("cache_size", cache_size, low=1)
        self.k = min(V.check_int("k", k, low=0), self.cache_size)
        self.proto_m = V.check_number("proto_m", proto_m, low=0.0, high=1.0)
        self.temperature = V.check_number("temperature", temperature, low=0.0, low_open=True)
        self.epsilon = V.check_number("epsilon", epsilon, low=0.0, low_open=True)
        self.sinkhorn_iterations = V.check_int("sinkhorn_iterations", sinkhorn_iterations, low=0)
        self.lambda_pcon = V.check_number("lambda_pcon", lambda_pcon, low=0.0)
        self.normalize = V.check_bool("normalize", normalize)
        n_protos = self.num_classes * self.cache_size
        self.register_buffer("prototypes", F.normalize(torch.rand(n_protos, self.feat_dim), dim=-1))
        self.register_buffer(
            "prototype_labels", torch.arange(n_protos) % self.num_classes, persistent=False
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
            f"cache_size={self.cache_size}, k={self.k}, proto_m={self.proto_m}, "
            f"temperature={self.temperature}, epsilon={self.epsilon}, "
            f"sinkhorn_iterations={self.sinkhorn_iterations}, lambda_pcon={self.lambda_pcon}"
        )

    # ----------------------------------------------------------------------- pieces

    def _rows(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked (N, d) rows in the compute dtype (views stacked view-major) and their
        (N,) labels."""
        x = V.check_floating("features", features)
        if x.dim() not in (2, 3) or x.shape[-1] != self.feat_dim:
            raise ValueError(
                f"features must have shape (B, V, {self.feat_dim}) or (B, {self.feat_dim}), "
                f"got {tuple(x.shape)}"
            )
        y = V.check_class_indices("labels", labels, (x.shape[0],), self.num_classes)
        dtype = compute_dtype(x, self.prototypes)
        z = x.to(dtype)
        if z.dim() == 3:  # torch.cat(torch.unbind(features, dim=1)): view-major
            y = y.repeat(z.shape[1])
            z = z.transpose(0, 1).reshape(-1, self.feat_dim)
        if self.normalize:
            z = normalize_rows(z)
        return z, y.to(z.device)

    def _log_assignment(self, z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """``log Q`` (N, K) of the Sinkhorn assignment of rows ``z`` (no gradient)."""
        with torch.no_grad():
            return _log_sinkhorn(z.detach() @ protos.T, self.epsilon, self.sinkhorn_iterations)

    def _top_k(self, log_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, k) prototype indices: the ``k`` of each row's class with the largest ``Q``."""
        steps = torch.arange(self.cache_size, device=y.device) * self.num_classes
        columns = y[:, None] + steps  # the class's prototypes, p = y + C j
        if self.k in (0, self.cache_size):
            return columns
        top = log_q.gather(1, columns).topk(self.k, dim=1).indices
        return columns.gather(1, top)

    def _ema(
        self, z: torch.Tensor, columns: torch.Tensor, log_q: torch.Tensor, protos: torch.Tensor
    ) -> torch.Tensor:
        """``normalize(m P + (1 - m) U^T z)``, differentiable in ``z`` (``U`` is not)."""
        with torch.no_grad():
            rows = _log_l1_normalize(log_q.gather(1, columns), 1).exp()
            u = torch.zeros_like(log_q).scatter_(1, columns, rows)
            u = u / u.sum(0, keepdim=True).clamp_min(_L1_FLOOR)
        update = u.T @ z
        return F.normalize(self.proto_m * protos + (1 - self.proto_m) * update, dim=1)

    # ------------------------------------------------------------------------ public

    def update_prototypes(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """The EMA update of steps 1-2 alone, in any mode, under ``no_grad``.

        Same shapes as :meth:`forward`; the buffer ``prototypes`` is replaced in place.
        """
        with torch.no_grad():
            z, y = self._rows(features, labels)
            if len(z) == 0:
                return
            protos = self.prototypes.to(z.dtype)
            log_q = self._log_assignment(z, protos)
            new = self._ema(z, self._top_k(log_q, y), log_q, protos)
            self.prototypes.copy_(new)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> PALMLossOutput:
        """The loss of a batch; in training mode the prototypes are updated first.

        Args:
            features: (B, V, d) or (B, d) projected features.
            labels: (B,) class indices.

        Returns:
            :class:`PALMLossOutput` ``(loss, mle, proto_contra)``.
        """
        z, y = self._rows(features, labels)
        protos = self.prototypes.to(z.dtype)
        contra_protos = protos
        if len(z) == 0:
            mle = z.sum() * 0.0  # the official mean over no rows is NaN
        else:
            log_q = self._log_assignment(z, protos)
            columns = self._top_k(log_q, y)
            if self.training:
                contra_protos = self._ema(z, columns, log_q, protos)
                with torch.no_grad():
                    self.prototypes.copy_(contra_protos.detach())
                protos = contra_protos.detach()
                log_q = self._log_assignment(z, protos)
            logits = z @ protos.T / self.temperature
            with torch.no_grad():
                weights = _log_l1_normalize(log_q.gather(1, columns), 1).exp()
            pos = (weights * logits.gather(1, columns)).sum(1)
            mle = (torch.logsumexp(logits, 1) - pos).mean()
        labels_p = self.prototype_labels.to(protos.device)
        contra = _proto_contra(contra_protos, labels_p)
        loss = mle + self.lambda_pcon * contra
        dtype = features.dtype
        return PALMLossOutput(loss.to(dtype), mle.to(dtype), contra.to(dtype))
