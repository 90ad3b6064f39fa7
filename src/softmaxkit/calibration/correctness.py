"""Correctness-aware (CA) calibration: a per-sample temperature fed by transformed views.

Liu, Wang, Zou, Zou & Zheng, "Optimizing Calibration by Gaining Aware of Prediction
Correctness", 2024, arXiv:2404.13016. A post-hoc calibrator should raise the
confidence of correctly predicted samples and lower it on wrong ones; because one
sample says little about its own correctness, the calibrator reads the softmax
outputs of transformed versions of the sample (rotated, greyscaled, colour-jittered)
and predicts a temperature for it.

Everything here follows the official code (liuyvchi/Correctness-aware-calibration,
``src/cal_metrics/temperature_scaling_CA.py::Temperature_adaptive`` and
``src/run_cal.py``); the paper's own equation text could not be consulted when this
was written, so where the two might differ the code is what is implemented:

* features: for every transformed view ``v >= 1``, the softmax of view ``v`` read at
  the top-``k`` classes (``k = 4``) of the original view ``0``, concatenated view by
  view (:func:`correctness_aware_features`);
* calibrator: ``T(x) = clamp(Linear(ReLU(Linear(a_x))), 0.1, 10)`` with hidden size 5,
  calibrated logits ``z_0 / T(x)`` (:class:`CorrectnessAwareCalibrator`);
* loss: the squared error between the top-1 confidence and the 0/1 correctness,
  with correct samples weighted ``1 - acc`` and wrong ones ``acc`` (``acc`` the
  accuracy of the mini-batch) (:func:`correctness_aware_loss`);
* fit: Adam, lr ``1e-4``, 10 epochs, shuffled mini-batches of 1000.
"""

from __future__ import annotations

import torch
from torch import nn

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import upcast
from softmaxkit._ops.row_loss import LossModule

__all__ = [
    "CorrectnessAwareCalibrator",
    "CorrectnessAwareLoss",
    "correctness_aware_features",
    "correctness_aware_loss",
]

IGNORE_INDEX = -100


def _check_balanced_options(balanced: object, reduction: object, ignore_index: object) -> None:
    V.check_bool("balanced", balanced)
    V.check_reduction(reduction)
    V.check_int("ignore_index", ignore_index)


def correctness_aware_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    balanced: bool = True,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""The correctness-aware (CA) calibration loss of Liu et al. (2024).

    "Optimizing Calibration by Gaining Aware of Prediction Correctness", 2024,
    arXiv:2404.13016, as realised in the official code (``Temperature_adaptive.
    set_temperature``: ``loss_CA = MSELoss(conf_out, correctness)`` weighted by
    ``weights``, then ``sum / weights.sum()``). For sample ``i`` with (calibrated)
    logits :math:`z_i`,

    .. math::
        c_i = \max_k \operatorname{softmax}(z_i)_k, \qquad
        y_i = \mathbb 1[\arg\max_k z_{ik} = t_i], \qquad
        \ell_i = (c_i - y_i)^2,

    .. math::
        w_i = \begin{cases} 1 - \mathrm{acc} & y_i = 1 \\ \mathrm{acc} & y_i = 0\end{cases},
        \qquad \mathrm{acc} = \tfrac1n \textstyle\sum_i y_i, \qquad
        L = \frac{\sum_i w_i \ell_i}{\sum_i w_i}.

    The weights balance the two groups: ``L = (mean over correct + mean over wrong) / 2``.
    They depend on the argmax only and carry no gradient. A positive temperature does
    not move the argmax, so ``y_i`` is the correctness of the uncalibrated prediction,
    as in the official code.

    Args:
        logits: floating tensor ``(N, C)`` or ``(N, C, d1, ...)`` (classes on axis 1, as
            ``cross_entropy``), or ``(C,)`` with a 0-d ``target``. ``-inf`` entries are
            masked classes; a row that is entirely ``-inf`` is ignored; NaN and ``+inf``
            are rejected (read on CPU tensors only). float16/bfloat16 are computed in
            float32 and the result returned in the input dtype.
        target: class indices, the logits' shape without the class axis.
        balanced: use the weights above (default, as the official code). ``False`` gives
            every kept sample weight 1 (the plain MSE to correctness).
        reduction: ``"mean"`` (default) ``sum_i w_i l_i / sum_i w_i``; ``"sum"``
            ``sum_i w_i l_i``; ``"none"`` the per-sample ``w_i l_i`` (0 where ignored), as
            ``cross_entropy`` with class weights.
        ignore_index: target value whose samples are left out (also of ``acc``).
            Default ``-100``.

    Returns:
        The loss (0-d, or the target's shape for ``"none"``). When every kept sample
        is correct, or every one is wrong, the balanced weights are all 0 (the official
        code then returns NaN); this function then gives every kept sample weight 1
        (``"mean"`` is the mean over the one non-empty group). With no kept sample
        ``"mean"`` gives 0.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration.correctness import correctness_aware_loss
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> target = torch.tensor([0, 0, 0])  # rows 0 and 2 correct, row 1 wrong
        >>> correctness_aware_loss(logits, target)
        tensor(0.2713)
    """
    V.check_floating("logits", logits)
    _check_balanced_options(balanced, reduction, ignore_index)
    class_dim = 1 if logits.ndim >= 2 else 0
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis), got a 0-d tensor")
    if logits.shape[class_dim] == 0:
        raise ValueError("logits must have at least one class, got 0 classes")
    target = V.check_class_target(target, logits, class_dim, ignore_index)
    V.check_tensor_values("logits", logits, high=float("inf"), high_open=True)
    return _ca_loss(logits, target, class_dim, balanced, reduction, ignore_index)


def _ca_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_dim: int,
    balanced: bool,
    reduction: str,
    ignore_index: int,
) -> torch.Tensor:
    """:func:`correctness_aware_loss` on checked arguments."""
    x = upcast(logits)
    top, pred = x.max(dim=class_dim)
    alive = top > float("-inf")
    # rows that are entirely -inf: compute on zeros so no NaN reaches values or gradients
    safe_x = torch.where(alive.unsqueeze(class_dim), x, 0.0)
    lse = torch.logsumexp(safe_x, dim=class_dim)
    conf = torch.where(alive, torch.exp(torch.where(alive, top, 0.0) - lse), 0.0)

    kept = (target != ignore_index) & alive
    correct = (pred == target) & kept
    wrong = kept & ~correct
    keptf = kept.to(x.dtype)
    if balanced:
        n_correct = correct.sum().to(x.dtype)
        n_kept = keptf.sum()
        acc = n_correct / n_kept.clamp_min(1.0)
        both = correct.any() & wrong.any()
        w_bal = torch.where(correct, 1.0 - acc, torch.where(wrong, acc, 0.0))
        weight = torch.where(both, w_bal, keptf)
    else:
        weight = keptf
    per_sample = weight * (conf - correct.to(x.dtype)) ** 2

    if reduction == "none":
        return per_sample.to(logits.dtype)
    total = per_sample.sum()
    if reduction == "sum":
        return total.to(logits.dtype)
    w_sum = weight.sum()
    mean = torch.where(w_sum > 0, total / torch.where(w_sum > 0, w_sum, 1.0), 0.0)
    return mean.to(logits.dtype)


class CorrectnessAwareLoss(LossModule):
    """Module twin of :func:`correctness_aware_loss` (same arguments and defaults).

    Example:
        >>> import torch
        >>> from softmaxkit.calibration.correctness import CorrectnessAwareLoss
        >>> CorrectnessAwareLoss(balanced=False)(torch.tensor([[4.0, 0.0]]), torch.tensor([0]))
        tensor(0.0003)
    """

    shared_options = ("reduction", "ignore_index")

    def __init__(
        self, *, balanced: bool = True, reduction: str = "mean", ignore_index: int = IGNORE_INDEX
    ) -> None:
        V.check_bool("balanced", balanced)  # checked first, as the functional does
        super().__init__(reduction=reduction, ignore_index=ignore_index)
        self.balanced = balanced

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return correctness_aware_loss(logits, target, balanced=self.balanced, **self.options())

    def extra_repr(self) -> str:
        return f"balanced={self.balanced}, reduction={self.reduction!r}"


def _check_views(view_logits: object, top_k: object) -> torch.Tensor:
    V.check_floating("view_logits", view_logits)
    assert isinstance(view_logits, torch.Tensor)
    if view_logits.ndim != 3:
        raise ValueError(
            "view_logits must have shape (N, V, C) (samples, views with the original first, "
            f"classes), got shape {tuple(view_logits.shape)}"
        )
    V.check_int("top_k", top_k, low=1)
    n_views, n_classes = view_logits.shape[1], view_logits.shape[2]
    if n_views < 2:
        raise ValueError(
            "view_logits must hold at least 2 views (the original and one transformed view) "
            f"on axis 1, got {n_views}"
        )
    if n_classes < top_k:  # type: ignore[operator]
        raise ValueError(f"top_k must be at most the number of classes {n_classes}, got {top_k}")
    lim = float("inf")
    V.check_tensor_values(
        "view_logits", view_logits, low=-lim, high=lim, low_open=True, high_open=True
    )
    return view_logits


def correctness_aware_features(view_logits: torch.Tensor, *, top_k: int = 4) -> torch.Tensor:
    r"""The calibrator's input: transformed views' softmax read at the original's top-k.

    Liu et al., "Optimizing Calibration by Gaining Aware of Prediction Correctness",
    2024, arXiv:2404.13016; the features of the official ``src/run_cal.py``
    (``temp_args = cat([p2topk1, p3topk1, p4topk1])``): with :math:`p^{(v)}` the softmax
    of view ``v`` and :math:`K` the indices of the ``top_k`` largest logits of the
    original view 0 (in decreasing order),

    .. math:: a_x = \big[\,p^{(1)}_K,\ p^{(2)}_K,\ \dots,\ p^{(V-1)}_K\,\big]
              \in [0, 1]^{(V-1)\,k}.

    High values mean the transformed views agree with the original's ranking, a cue
    of a correct prediction. The official run uses ``V = 4`` (original, rotation,
    greyscale, colour jitter) and ``k = 4``: 12 features.

    Args:
        view_logits: finite floating tensor ``(N, V, C)``: the model's logits for each
            sample's ``V >= 2`` views, the **original (untransformed) view first**.
        top_k: how many of the original's top classes to read. Default 4 (official).

    Returns:
        ``(N, (V - 1) * top_k)`` tensor, view-major, in float32 for half inputs and in
        the input dtype otherwise.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration.correctness import correctness_aware_features
        >>> views = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])  # (1 sample, 2 views, 3)
        >>> correctness_aware_features(views, top_k=2)
        tensor([[0.3333, 0.3333]])
    """
    _check_views(view_logits, top_k)
    x = upcast(view_logits)
    n, v, _ = x.shape
    probs = torch.softmax(x[:, 1:], dim=-1)
    top = torch.topk(x[:, 0], top_k, dim=-1).indices  # (N, k), decreasing
    picked = probs.gather(-1, top.unsqueeze(1).expand(n, v - 1, top_k))
    return picked.reshape(n, (v - 1) * top_k)


class CorrectnessAwareCalibrator(nn.Module):
    r"""Per-sample temperature from transformed views, trained with the CA loss.

    Liu et al., "Optimizing Calibration by Gaining Aware of Prediction Correctness",
    2024, arXiv:2404.13016 (official ``Temperature_adaptive``). For a sample with view
    logits :math:`z^{(0)}, \dots, z^{(V-1)}` (original first) and features
    :math:`a_x` = :func:`correctness_aware_features`,

    .. math::
        T(x) = \operatorname{clamp}\big(W_2\,\mathrm{ReLU}(W_1 a_x + b_1) + b_2,\;
               t_{\min},\; t_{\max}\big), \qquad \hat z = z^{(0)} / T(x).

    :meth:`fit` minimises :func:`correctness_aware_loss` of :math:`\hat z` with Adam,
    then ``calibrator(view_logits)`` returns :math:`\hat z` (the argmax never changes).

    Defaults (official code): ``num_views = 4`` (original + rotation, greyscale, colour
    jitter), ``top_k = 4``, hidden size 5, ``t_min = 0.1``, ``t_max = 10``; fit with
    Adam, lr ``1e-4``, 10 epochs, shuffled batches of 1000, balanced weights.

    Deviations from the official code, each said here:

    * **Initialisation.** The output layer starts at weight 0 and bias 1, so the
      unfitted map is ``T = 1`` (the uncalibrated model) and every sample gets a
      gradient from the first step. The official code keeps PyTorch's default init,
      whose initial ``T`` is arbitrary and, below ``t_min``, clamped with zero gradient.
    * The official model also has an unused ``temperature`` parameter and a
      correctness head trained by nothing (its BCE is computed but never added to the
      loss); neither is built here.
    * Shuffling uses a ``torch.Generator`` seeded by ``fit``'s ``seed``.

    The official defaults move the weights by at most about ``lr`` per step (Adam), so
    with few samples (few steps) the fit changes little; raise ``lr``/``epochs`` then.

    Args:
        num_views: ``V``, views per sample including the original. Default 4.
        top_k: classes read per view. Default 4.
        hidden_dim: hidden width. Default 5.
        t_min, t_max: temperature clamp. Defaults 0.1 and 10.

    Example:
        >>> import torch
        >>> from softmaxkit.calibration.correctness import CorrectnessAwareCalibrator
        >>> g = torch.Generator().manual_seed(0)
        >>> views = 5 * torch.randn(64, 3, 6, generator=g)
        >>> target = torch.randint(0, 6, (64,), generator=g)
        >>> cal = CorrectnessAwareCalibrator(num_views=3).fit(views, target, lr=1e-2)
        >>> cal(views).shape, bool((cal(views).argmax(1) == views[:, 0].argmax(1)).all())
        (torch.Size([64, 6]), True)
    """

    fitted: torch.Tensor

    def __init__(
        self,
        *,
        num_views: int = 4,
        top_k: int = 4,
        hidden_dim: int = 5,
        t_min: float = 0.1,
        t_max: float = 10.0,
    ) -> None:
        super().__init__()
        V.check_int("num_views", num_views, low=2)
        V.check_int("top_k", top_k, low=1)
        V.check_int("hidden_dim", hidden_dim, low=1)
        V.check_number("t_min", t_min, low=0.0, low_open=True)
        V.check_number("t_max", t_max, low=t_min, low_open=True)
        self.num_views = num_views
        self.top_k = top_k
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.embed = nn.Linear((num_views - 1) * top_k, hidden_dim)
        self.head = nn.Linear(hidden_dim, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(1.0)
        self.register_buffer("fitted", torch.tensor(False))
        self._is_fitted = False
        # torch leaves Module.register_load_state_dict_post_hook unannotated
        self.register_load_state_dict_post_hook(_sync_fitted)  # type: ignore[no-untyped-call]

    def extra_repr(self) -> str:
        return (
            f"num_views={self.num_views}, top_k={self.top_k}, "
            f"t_min={self.t_min:g}, t_max={self.t_max:g}"
        )

    def _check(self, view_logits: object) -> torch.Tensor:
        x = _check_views(view_logits, self.top_k)
        if x.shape[1] != self.num_views:
            raise ValueError(
                f"view_logits must hold num_views={self.num_views} views on axis 1, "
                f"got {x.shape[1]}"
            )
        return x

    def _temperature(self, view_logits: torch.Tensor) -> torch.Tensor:
        feats = correctness_aware_features(view_logits, top_k=self.top_k)
        feats = feats.to(self.embed.weight.dtype)
        raw: torch.Tensor = self.head(torch.relu(self.embed(feats))).squeeze(-1)
        return raw.clamp(self.t_min, self.t_max)

    def _require_fitted(self) -> None:
        if not self._is_fitted:
            raise RuntimeError(
                "CorrectnessAwareCalibrator is not fitted: call fit(view_logits, target) first"
            )

    def temperature(self, view_logits: torch.Tensor) -> torch.Tensor:
        """The per-sample temperatures ``T(x)``, shape ``(N,)``, in ``[t_min, t_max]``."""
        self._require_fitted()
        return self._temperature(self._check(view_logits))

    def forward(self, view_logits: torch.Tensor) -> torch.Tensor:
        """Calibrated logits of the original view, ``view_logits[:, 0] / T(x)``, ``(N, C)``,
        in the input dtype (half inputs computed in float32)."""
        self._require_fitted()
        x = self._check(view_logits)
        t = self._temperature(x)
        z0 = upcast(x[:, 0])
        return (z0 / t.to(z0.dtype).unsqueeze(-1)).to(x.dtype)

    def fit(
        self,
        view_logits: torch.Tensor,
        target: torch.Tensor,
        *,
        lr: float = 1e-4,
        epochs: int = 10,
        batch_size: int = 1000,
        balanced: bool = True,
        seed: int = 0,
    ) -> CorrectnessAwareCalibrator:
        """Train on held-out (validation) views and labels; returns ``self``.

        Args:
            view_logits: finite ``(N, V, C)`` logits, the original view first.
            target: ``(N,)`` class indices (``-100`` rows are ignored).
            lr, epochs, batch_size: Adam's learning rate, passes over the data and
                mini-batch size. Defaults ``1e-4``, 10, 1000 (official code).
            balanced: the CA loss's group weights (default ``True``, official).
            seed: seeds the shuffling. Default 0. The hidden layer starts from
                PyTorch's default initialisation (torch's global generator): call
                ``torch.manual_seed`` before building the calibrator for a
                reproducible fit.
        """
        x = self._check(view_logits)
        target = V.check_class_target(target, x[:, 0], 1, IGNORE_INDEX)
        V.check_number("lr", lr, low=0.0, low_open=True)
        V.check_int("epochs", epochs, low=0)
        V.check_int("batch_size", batch_size, low=1)
        V.check_bool("balanced", balanced)
        V.check_int("seed", seed)
        with torch.no_grad():
            feats = correctness_aware_features(x, top_k=self.top_k).to(self.embed.weight.dtype)
            z0 = upcast(x[:, 0]).to(self.embed.weight.dtype)
        n = z0.shape[0]
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        was_training = self.training
        self.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(z0.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                t = self.head(torch.relu(self.embed(feats[idx]))).squeeze(-1)
                t = t.clamp(self.t_min, self.t_max)
                z = z0[idx] / t.unsqueeze(-1)
                loss = _ca_loss(z, target[idx], 1, balanced, "mean", IGNORE_INDEX)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.train(was_training)
        self.fitted.fill_(True)
        self._is_fitted = True
        return self


def _sync_fitted(module: nn.Module, incompatible_keys: object) -> None:
    """After ``load_state_dict``: read the loaded ``fitted`` flag once (not on a hot path)."""
    assert isinstance(module, CorrectnessAwareCalibrator)
    module._is_fitted = bool(module.fitted)
