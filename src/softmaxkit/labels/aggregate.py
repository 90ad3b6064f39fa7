"""Soft labels from crowd annotations, and their simple average.

The soft-labelling methods compared in Wright & Augenstein, "Aggregating Soft Labels from
Crowd Annotations Improves Uncertainty Estimation Under Distribution Shift" (2022/2025,
arXiv:2212.09409; official code copenlu/aggregating-crowd-annotations-ood). The official
code computes seven per-item label distributions (``util/datareader.py``): ``standard``
(vote fractions), ``softmax`` (softmax of raw vote counts) and, through crowdkit's
``fit_predict_proba``, Dawid-Skene (``ds``), GLAD (``glad``), MACE (``mace``, with
``random_state=seed``), Wawa (``wawa``) and ZeroBasedSkill (``zbs``); its default list
(``--crowdkit_classes`` in ``rte.py``) is all seven. The paper's proposal is their simple
(optionally weighted) average, ``aggregate(..., 'ensemble_basic')`` = ``np.average``. The
paper reports "8 soft-labeling methods"; which eighth method it counts (majority vote or
the ``bayes`` variant mentioned in comments of the code) could not be verified here.

Every method here is a native torch transcription (no crowdkit dependency) with
crowdkit's defaults (crowdkit ``aggregation/classification/*.py``, read for this port).

The common arguments of every method: ``annotations`` is an ``(items, annotators)``
tensor of class indices in ``[0, num_classes)`` (``num_classes = K >= 1``) of any integer
dtype (int8 ... int64, uint8; bool and floating annotations raise ``TypeError``), with
``missing`` (default ``-1``, outside ``[0, K)``) where an annotator did not label an
item; ``dtype`` is the floating output dtype. Each method returns an ``(items, K)``
tensor of soft labels or posteriors (rows sum to 1) in ``dtype`` (default float32;
float16/bfloat16 are computed in float32). An item nobody annotated gets the uniform
distribution (it carries no evidence; crowdkit drops
such items). Annotations are held densely as a one-hot ``(items, annotators, classes)``
tensor, so memory is O(items x annotators x classes).

The EM methods loop over iterations (never over items or annotators) and read one scalar
per iteration for the convergence test, as crowdkit does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype
from softmaxkit._ops.optim import lbfgs
from softmaxkit.labels._votes import votes

__all__ = [
    "METHODS",
    "DawidSkeneFit",
    "standard_soft_labels",
    "softmax_soft_labels",
    "dawid_skene",
    "glad",
    "mace",
    "wawa",
    "zero_based_skill",
    "average_soft_labels",
    "aggregate_soft_labels",
]

_EPS = 1e-10  # crowdkit's clip for probabilities before logs (dawid_skene.py, _EPS)


def _finish(probs: torch.Tensor, observed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uniform rows for unannotated items, cast to the output dtype."""
    annotated = observed.any(dim=1, keepdim=True)
    uniform = torch.full_like(probs, 1.0 / probs.shape[-1])
    return torch.where(annotated, probs, uniform).to(dtype)


def _normalize_rows(scores: torch.Tensor) -> torch.Tensor:
    """Rows divided by their sum; an all-zero row becomes uniform."""
    total = scores.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[-1])
    return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), uniform)


def _check_method_options(**options: int | float) -> None:
    for name, value in options.items():
        if name in ("n_iter", "m_step_max_iter", "n_restarts", "lr_steps_to_reduce"):
            V.check_int(name, value, low=1)
        else:
            V.check_number(name, value, low=0.0, low_open=True)


def standard_soft_labels(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Vote fractions: :math:`y_{ik} = n_{ik} / \sum_c n_{ic}` (``standard`` in the paper).

    :math:`n_{ik}` is the number of annotators who gave item ``i`` class ``k``. Official
    code: ``normalized_distribution`` in ``util/datareader.py`` of
    copenlu/aggregating-crowd-annotations-ood (Wright & Augenstein, arXiv:2212.09409).

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).

    Returns:
        ``(items, K)`` soft labels; unannotated items are uniform.

    Example:
        >>> a = torch.tensor([[0, 0, 1], [2, -1, -1]])
        >>> standard_soft_labels(a, 3)
        tensor([[0.6667, 0.3333, 0.0000],
                [0.0000, 0.0000, 1.0000]])
    """
    onehot, observed, _, _ = votes(annotations, num_classes, missing, dtype)
    return _finish(_normalize_rows(onehot.sum(dim=1)), observed, dtype)


def softmax_soft_labels(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    temperature: float = 1.0,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Softmax of the raw vote counts: :math:`y_{ik} = \mathrm{softmax}_k(n_{ik} / T)`.

    ``softmax`` in the paper (official ``softmax_distribution``, ``T = 1``). It is **not
    scale invariant**: the counts are used as logits, so the same vote fractions from
    more annotators give a sharper distribution (2 of 3 votes give 0.73 with two
    classes, 20 of 30 give 0.99995). ``temperature`` (default 1, the official behaviour)
    divides the counts; ``T`` equal to the number of annotators makes it a softmax of
    the vote fractions. An unannotated item has all counts 0, hence the uniform row.

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).
        temperature: ``T > 0``.

    Example:
        >>> a = torch.tensor([[0, 0, 1]])
        >>> softmax_soft_labels(a, 2)
        tensor([[0.7311, 0.2689]])
    """
    V.check_number("temperature", temperature, low=0.0, low_open=True)
    onehot, _, _, _ = votes(annotations, num_classes, missing, dtype)
    return torch.softmax(onehot.sum(dim=1) / temperature, dim=-1).to(dtype)


class DawidSkeneFit(NamedTuple):
    """Result of :func:`dawid_skene` with ``return_params=True``.

    Attributes:
        probs: ``(items, K)`` posterior class probabilities.
        confusion: ``(annotators, K, K)``; ``confusion[m, c, l]`` is the estimated
            probability that annotator ``m`` answers ``l`` when the true class is ``c``
            (rows sum to 1).
        priors: ``(K,)`` estimated class prior.
        n_iter: number of EM iterations run.
    """

    probs: torch.Tensor
    confusion: torch.Tensor
    priors: torch.Tensor
    n_iter: int


def _ds_m_step(onehot: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    counts = torch.einsum("nc,nml->mcl", post, onehot).clamp_min(_EPS)
    return counts / counts.sum(dim=-1, keepdim=True)


def _mean_over(post: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    weight = annotated.to(post.dtype).unsqueeze(-1)
    return (post * weight).sum(0) / weight.sum().clamp_min(1.0)


@overload
def dawid_skene(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_iter: int = ...,
    tol: float = ...,
    missing: int = ...,
    dtype: torch.dtype = ...,
    return_params: Literal[False] = ...,
) -> torch.Tensor: ...
@overload
def dawid_skene(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_iter: int = ...,
    tol: float = ...,
    missing: int = ...,
    dtype: torch.dtype = ...,
    return_params: Literal[True],
) -> DawidSkeneFit: ...
@overload
def dawid_skene(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_iter: int = ...,
    tol: float = ...,
    missing: int = ...,
    dtype: torch.dtype = ...,
    return_params: bool,
) -> torch.Tensor | DawidSkeneFit: ...


def dawid_skene(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_iter: int = 100,
    tol: float = 1e-5,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
    return_params: bool = False,
) -> torch.Tensor | DawidSkeneFit:
    r"""Dawid-Skene posteriors by EM with per-annotator confusion matrices.

    Model (Dawid & Skene 1979, "Maximum Likelihood Estimation of Observer Error-Rates
    Using the EM Algorithm"): the true class :math:`z_i \sim \pi`; annotator ``m``
    answers :math:`l` with probability :math:`e_m[z_i, l]`. EM as in crowdkit's
    ``DawidSkene``: initialise the posteriors with vote fractions (majority vote), then

    - M-step: :math:`\pi = \mathrm{mean}_i T_i`,
      :math:`e_m[c, l] \propto \max(\sum_i T_{ic} [y_{im} = l], 10^{-10})`;
    - E-step: :math:`T_{ic} \propto \pi_c \prod_{m} e_m[c, y_{im}]` (in log space);

    stopping after ``n_iter`` iterations or when the evidence lower bound per annotation
    rises by less than ``tol``. Defaults ``n_iter=100``, ``tol=1e-5`` are crowdkit's.
    The prior is averaged over annotated items only; unannotated items get uniform rows.

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).
        n_iter: maximum number of EM iterations.
        tol: stop when the ELBO per annotation improves by less than this.
        return_params: also return the confusion matrices and prior
            (a :class:`DawidSkeneFit`).

    Returns:
        ``(items, K)`` posteriors, or a :class:`DawidSkeneFit`.

    Example:
        >>> a = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
        >>> dawid_skene(a, 2).argmax(-1)
        tensor([0, 1, 0, 1])
    """
    _check_method_options(n_iter=n_iter, tol=tol)
    V.check_bool("return_params", return_params)
    onehot, observed, work, _ = votes(annotations, num_classes, missing, dtype)
    annotated = observed.any(dim=1)
    n_annotations = observed.sum().clamp_min(1).to(work)
    post = _normalize_rows(onehot.sum(dim=1))
    priors = _mean_over(post, annotated)
    errors = _ds_m_step(onehot, post)
    previous = -math.inf
    done = 0
    for done in range(1, n_iter + 1):  # noqa: B007 (the count is reported)
        log_errors = errors.log()
        log_priors = priors.clamp_min(_EPS).log()
        joint = log_priors + torch.einsum("nml,mcl->nc", onehot, log_errors)
        post = torch.softmax(joint, dim=-1)
        priors = _mean_over(post, annotated)
        errors = _ds_m_step(onehot, post)
        # ELBO (crowdkit's loss): E_T[log p(z, y)] + H(T), per annotation
        joint = priors.clamp_min(_EPS).log() + torch.einsum("nml,mcl->nc", onehot, errors.log())
        entropy = -(post * post.clamp_min(_EPS).log()).sum(-1)
        elbo = ((post * joint).sum(-1) + entropy)[annotated].sum() / n_annotations
        current = float(elbo)
        if current - previous < tol:
            break
        previous = current
    probs = _finish(post, observed, dtype)
    if return_params:
        return DawidSkeneFit(probs, errors.to(dtype), priors.to(dtype), done)
    return probs


def glad(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_iter: int = 100,
    tol: float = 1e-5,
    m_step_max_iter: int = 25,
    m_step_tol: float = 1e-2,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""GLAD posteriors (annotator ability and item difficulty), fitted by EM.

    Whitehill et al., "Whose Vote Should Count More: Optimal Integration of Labels from
    Labelers of Unknown Expertise" (NeurIPS 2009), as parametrised by crowdkit's ``GLAD``:
    annotator ``m`` answers correctly with probability
    :math:`a_{im} = \sigma(\alpha_m e^{\beta_i})` and otherwise picks one of the other
    ``K - 1`` classes uniformly; uniform class prior; priors
    :math:`\alpha_m, \beta_i \sim \mathcal N(1, 1)`; initialisation
    :math:`\alpha = \beta = 1`. E-step: :math:`T_{ic} \propto \prod_m a_{im}^{[y_{im}=c]}
    ((1 - a_{im})/(K-1))^{[y_{im} \ne c]}`. M-step: maximise the expected complete
    log-likelihood plus the log-priors over :math:`(\alpha, \beta)`. crowdkit runs
    scipy's nonlinear conjugate gradient (at most ``m_step_max_iter=25`` iterations,
    gradient tolerance ``m_step_tol=1e-2``); here the same objective is maximised with
    ``torch.optim.LBFGS`` (strong-Wolfe line search) under the same caps, so the
    iterates differ slightly from crowdkit's while the fixed points are the same. EM
    stops after ``n_iter=100`` iterations or when the objective per (annotation, class)
    rises by less than ``tol=1e-5`` (crowdkit's defaults); the returned posteriors come
    from the last E-step, as in crowdkit. ``K = 1`` returns ones.

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).
        n_iter: maximum number of EM iterations.
        tol: EM tolerance on the normalised objective.
        m_step_max_iter: maximum optimiser iterations per M-step.
        m_step_tol: optimiser tolerance on the gradient's largest entry.

    Example:
        >>> a = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
        >>> glad(a, 2).argmax(-1)
        tensor([0, 1, 0, 1])
    """
    _check_method_options(
        n_iter=n_iter, tol=tol, m_step_max_iter=m_step_max_iter, m_step_tol=m_step_tol
    )
    onehot, observed, work, _ = votes(annotations, num_classes, missing, dtype)
    n_items, n_annotators = observed.shape
    if num_classes == 1 or not bool(observed.any()):
        return _finish(
            torch.ones(n_items, num_classes, dtype=work, device=onehot.device), observed, dtype
        )
    obs = observed.to(work)
    log_k1 = math.log(num_classes - 1)
    log_prior = -math.log(num_classes)
    normaliser = float(observed.sum()) * num_classes  # crowdkit's len(data) after melting

    def log_terms(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = alpha.unsqueeze(0) * beta.exp().unsqueeze(1)
        return -F.softplus(-ab), -F.softplus(ab) - log_k1

    def e_step(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        log_right, log_wrong = log_terms(alpha, beta)
        ll = torch.einsum("nmc,nm->nc", onehot, (log_right - log_wrong) * obs)
        ll = ll + (log_wrong * obs).sum(dim=1, keepdim=True)
        return torch.softmax(ll + log_prior, dim=-1)

    def objective(alpha: torch.Tensor, beta: torch.Tensor, p_given: torch.Tensor) -> torch.Tensor:
        log_right, log_wrong = log_terms(alpha, beta)
        expected = (obs * (p_given * log_right + (1 - p_given) * log_wrong)).sum()
        log_gauss = -0.5 * math.log(2 * math.pi)
        priors = (-0.5 * (alpha - 1) ** 2 + log_gauss).sum()
        return expected + priors + (-0.5 * (beta - 1) ** 2 + log_gauss).sum()

    alpha = torch.ones(n_annotators, dtype=work, device=onehot.device)
    beta = torch.ones(n_items, dtype=work, device=onehot.device)
    post = e_step(alpha, beta)
    previous = -math.inf
    for _ in range(n_iter):
        post = e_step(alpha, beta)
        p_given = (onehot * post.unsqueeze(1)).sum(-1)  # posterior of the given answer
        x = torch.cat([alpha, beta]).detach().requires_grad_(True)
        optimiser = lbfgs(
            [x], max_iter=m_step_max_iter, tolerance_grad=m_step_tol, tolerance_change=1e-12
        )

        def closure(
            x: torch.Tensor = x,
            p_given: torch.Tensor = p_given,
            optimiser: torch.optim.LBFGS = optimiser,
        ) -> torch.Tensor:
            optimiser.zero_grad()
            loss = -objective(x[:n_annotators], x[n_annotators:], p_given)
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        alpha, beta = x.detach()[:n_annotators], x.detach()[n_annotators:]
        current = float(objective(alpha, beta, p_given)) / normaliser
        if current - previous < tol:
            break
        previous = current
    return _finish(post, observed, dtype)


def _digamma_normalize(counts: torch.Tensor, prior: float | torch.Tensor) -> torch.Tensor:
    """MACE's variational-Bayes normalisation exp(psi(x + a)) / exp(psi(sum(x + a)))."""
    shifted = counts + prior
    return torch.exp(torch.digamma(shifted) - torch.digamma(shifted.sum(-1, keepdim=True)))


def mace(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_restarts: int = 10,
    n_iter: int = 50,
    method: str = "vb",
    smoothing: float | None = None,
    default_noise: float = 0.5,
    alpha: float = 0.5,
    beta: float = 0.5,
    seed: int = 0,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""MACE posteriors (annotators who know the answer or spam with a strategy).

    Hovy et al., "Learning Whom to Trust with MACE" (NAACL 2013), as in crowdkit's
    ``MACE``: the true class is uniform; annotator ``m`` spams with probability
    :math:`s_m`, answering from its strategy :math:`\xi_m`, and otherwise answers the
    true class, so :math:`P(y_{im} = l \mid z_i = t) = s_m \xi_m(l) + (1 - s_m)[l = t]`.
    E-step: :math:`T_{it} \propto \prod_m (s_m \xi_m(y_{im}) + (1 - s_m)[y_{im} = t])`
    (log space); expected spam / know counts per annotation. M-step: ``method="vb"``
    (default) uses variational Bayes with Beta(``alpha``, ``beta``) = Beta(0.5, 0.5) on
    the spamming probability and a symmetric Dirichlet(10) on the strategies
    (:math:`\exp\psi(x + a) / \exp\psi(\sum (x + a))`); ``method="em"`` adds
    ``smoothing`` (default ``0.01 / K``) and normalises. Each of ``n_restarts=10`` runs
    starts from parameters drawn uniformly in ``[1, 2 + default_noise]`` and normalised,
    runs ``n_iter=50`` iterations, and the run with the best log marginal likelihood
    :math:`\sum_i \log(\sum_t \prod_m \dots / K + 10^{-8})` wins (crowdkit's defaults).
    The restarts run together as a batch. Randomness comes from a ``torch.Generator``
    seeded with ``seed`` (the paper's code passes ``random_state=seed``; crowdkit
    draws every restart from the same seed, so its restarts coincide, whereas here
    they are distinct draws from one generator).

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).
        n_restarts: number of random restarts.
        n_iter: EM iterations per restart.
        method: ``"vb"`` or ``"em"``.
        smoothing: additive smoothing of the ``"em"`` M-step (default ``0.01 / K``).
        default_noise: width parameter of the random initialisation.
        alpha: Beta prior parameter on the spamming count (``"vb"``).
        beta: Beta prior parameter on the knowing count (``"vb"``).
        seed: seed of the initialisation.

    Example:
        >>> a = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
        >>> mace(a, 2, n_restarts=2).argmax(-1)
        tensor([0, 1, 0, 1])
    """
    _check_method_options(n_restarts=n_restarts, n_iter=n_iter, alpha=alpha, beta=beta)
    V.check_choice("method", method, ("vb", "em"))
    V.check_number("default_noise", default_noise, low=0.0)
    V.check_int("seed", seed)
    if smoothing is not None:
        V.check_number("smoothing", smoothing, low=0.0)
    onehot, observed, work, given = votes(annotations, num_classes, missing, dtype)
    n_items, n_annotators = observed.shape
    smooth = 0.01 / num_classes if smoothing is None else smoothing
    spam, strategy = _mace_init(n_restarts, n_annotators, num_classes, default_noise, seed)
    spam, strategy = spam.to(onehot.device, work), strategy.to(onehot.device, work)
    obs = observed.to(work)
    annotated = observed.any(dim=1)

    n_restarts_ = spam.shape[0]
    given_r = given.unsqueeze(0).expand(n_restarts_, -1, -1)  # (R, N, M)
    flat = (torch.arange(n_annotators, device=given.device) * num_classes + given).flatten()
    weight = annotated.to(work)

    def e_step(
        spam: torch.Tensor, strategy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        spam_strategy = (spam[..., :1] * strategy).flatten(1)  # (R, M*K)
        spam_given = spam_strategy[:, flat].view(n_restarts_, n_items, n_annotators)
        know = spam[..., 1].unsqueeze(1)  # (R, 1, M)
        log_spam = torch.where(observed, spam_given.log(), 0.0)
        gain = torch.where(observed, torch.log1p(know / spam_given), 0.0)
        log_gold = torch.zeros(n_restarts_, n_items, num_classes, dtype=work, device=given.device)
        log_gold = log_gold.scatter_add_(2, given_r, gain)
        log_gold = log_gold + log_spam.sum(-1, keepdim=True) - math.log(num_classes)
        log_instance = torch.logsumexp(log_gold, dim=-1)
        lml = torch.logaddexp(log_instance, log_instance.new_tensor(math.log(1e-8)))
        lml = (lml * weight).sum(-1)
        post = torch.softmax(log_gold, dim=-1)
        p_given = post.gather(2, given_r)  # posterior of the given answer
        ratio = spam_given / (spam_given + know)
        spammed = ((1 - p_given) + p_given * ratio) * obs
        knew = p_given * (1 - ratio) * obs
        strategy_counts = torch.zeros(
            n_restarts_, n_annotators * num_classes, dtype=work, device=given.device
        )
        strategy_counts = strategy_counts.index_add_(1, flat, spammed.flatten(1))
        strategy_counts = strategy_counts.view(n_restarts_, n_annotators, num_classes)
        knowing_counts = torch.stack([spammed.sum(1), knew.sum(1)], dim=-1)
        return lml, post, strategy_counts, knowing_counts

    lml, post, strategy_counts, knowing_counts = e_step(spam, strategy)
    for _ in range(n_iter):
        if method == "vb":
            prior = torch.tensor([alpha, beta], dtype=work, device=onehot.device)
            spam = _digamma_normalize(knowing_counts, prior)
            strategy = _digamma_normalize(strategy_counts, 10.0)
        else:
            spam = (knowing_counts + smooth) / (knowing_counts + smooth).sum(-1, keepdim=True)
            strategy = (strategy_counts + smooth) / (strategy_counts + smooth).sum(-1, keepdim=True)
        lml, post, strategy_counts, knowing_counts = e_step(spam, strategy)
    best = torch.argmax(lml)  # the first best restart, as crowdkit's strict '>'
    return _finish(post[best], observed, dtype)


def _mace_init(
    n_restarts: int, n_annotators: int, num_classes: int, default_noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MACE starts (float64, CPU): U[1, 2 + noise] draws normalised per annotator.

    ``spam[..., 0]`` is the spamming probability, ``spam[..., 1]`` the knowing one.
    """
    generator = torch.Generator().manual_seed(seed)
    width = 1.0 + default_noise  # scipy's uniform(loc=1, scale=1 + noise)
    spam = 1.0 + width * torch.rand(
        n_restarts, n_annotators, 2, generator=generator, dtype=torch.float64
    )
    strategy = 1.0 + width * torch.rand(
        n_restarts, n_annotators, num_classes, generator=generator, dtype=torch.float64
    )
    return spam / spam.sum(-1, keepdim=True), strategy / strategy.sum(-1, keepdim=True)


def _weighted_votes(onehot: torch.Tensor, skills: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nml,m->nl", onehot, skills)


def _agreement(onehot: torch.Tensor, observed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per annotator: fraction of its answers equal to ``labels`` (0 for no answers)."""
    hits = onehot.gather(2, labels.view(-1, 1, 1).expand(-1, onehot.shape[1], 1)).squeeze(-1)
    answered = observed.to(onehot.dtype).sum(0)
    return hits.sum(0) / answered.clamp_min(1.0)


def wawa(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Wawa (worker agreement with aggregate): skill-weighted vote fractions.

    As crowdkit's ``Wawa``: (1) majority vote :math:`\hat z_i = \arg\max_k n_{ik}` (ties
    to the smallest class index, as pandas' ``idxmax``); (2) annotator skill
    :math:`w_m` = fraction of its answers equal to :math:`\hat z`; (3)
    :math:`y_{ik} \propto \sum_m w_m [y_{im} = k]`. An item whose annotators all have
    skill 0 gets the uniform row (crowdkit would divide by zero).

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).

    Example:
        >>> a = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
        >>> wawa(a, 2)
        tensor([[0.8000, 0.2000],
                [0.0000, 1.0000],
                [1.0000, 0.0000],
                [0.2000, 0.8000]])
    """
    onehot, observed, _, _ = votes(annotations, num_classes, missing, dtype)
    labels = onehot.sum(dim=1).argmax(dim=-1)
    skills = _agreement(onehot, observed, labels)
    return _finish(_normalize_rows(_weighted_votes(onehot, skills)), observed, dtype)


def zero_based_skill(
    annotations: torch.Tensor,
    num_classes: int,
    *,
    n_iter: int = 100,
    lr_init: float = 1.0,
    lr_steps_to_reduce: int = 20,
    lr_reduce_factor: float = 0.5,
    eps: float = 1e-5,
    missing: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Zero-Based Skill: weighted majority vote with skills learnt by gradient steps.

    As crowdkit's ``ZeroBasedSkill``: skills start at :math:`1/L + \varepsilon` (``L`` the
    number of distinct classes present, ``eps=1e-5``); for ``t = 1..n_iter`` (100) the
    learning rate is multiplied by ``lr_reduce_factor`` (0.5) whenever ``t`` is a
    multiple of ``lr_steps_to_reduce`` (20), the weighted vote
    :math:`\hat z_i = \arg\max_k \sum_m w_m [y_{im} = k]` is taken, and
    :math:`w \leftarrow w + \eta (\mathrm{acc}(\hat z) - w)` where :math:`\mathrm{acc}_m`
    is annotator ``m``'s agreement with :math:`\hat z`. Output:
    :math:`y_{ik} \propto \sum_m w_m [y_{im} = k]` with the final skills (all-zero
    weight rows are uniform). Defaults are crowdkit's; ``lr_init=1``.

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).
        n_iter: number of skill updates.
        lr_init: initial learning rate.
        lr_steps_to_reduce: learning-rate decay period.
        lr_reduce_factor: learning-rate decay factor.
        eps: offset of the initial skill.

    Example:
        >>> a = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]])
        >>> zero_based_skill(a, 2).argmax(-1)
        tensor([0, 1, 0, 1])
    """
    _check_method_options(
        n_iter=n_iter, lr_init=lr_init, lr_steps_to_reduce=lr_steps_to_reduce, eps=eps
    )
    V.check_number("lr_reduce_factor", lr_reduce_factor, low=0.0, high=1.0)
    onehot, observed, work, _ = votes(annotations, num_classes, missing, dtype)
    present = (onehot.sum(dim=(0, 1)) > 0).sum().clamp_min(1).to(work)
    skills = torch.ones(observed.shape[1], dtype=work, device=onehot.device) / present + eps
    lr = lr_init
    for step in range(1, n_iter + 1):
        if step % lr_steps_to_reduce == 0:
            lr *= lr_reduce_factor
        labels = _weighted_votes(onehot, skills).argmax(dim=-1)
        skills = skills + lr * (_agreement(onehot, observed, labels) - skills)
    return _finish(_normalize_rows(_weighted_votes(onehot, skills)), observed, dtype)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "standard": standard_soft_labels,
    "softmax": softmax_soft_labels,
    "ds": dawid_skene,
    "glad": glad,
    "mace": mace,
    "wawa": wawa,
    "zbs": zero_based_skill,
}
"""The seven soft-labelling methods of the official code, by the official short names."""


def average_soft_labels(
    distributions: Sequence[torch.Tensor],
    weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The paper's aggregation: :math:`\bar y = \sum_j w_j y^{(j)} / \sum_j w_j`.

    ``ensemble_basic`` of the official code (``np.average`` over methods, uniform
    weights by default). Inputs of one shape ``(..., K)``; the result has the dtype that
    the inputs promote to (float16/bfloat16 are averaged in float32).

    Computed as :math:`\sum_j (w_j / \sum_i w_i)\, y^{(j)}` (``y / n`` summed without
    weights), so no partial sum leaves the inputs' range: finite inputs anywhere in the
    dtype's range give a finite average.

    Args:
        distributions: non-empty sequence of floating tensors of the same shape, finite
            (NaN and +-inf raise ``ValueError`` naming the entry, checked on CPU tensors).
        weights: optional finite non-negative weights, one per distribution, not all zero.

    Returns:
        The weighted average (rows still sum to 1 when the inputs' rows do).

    Example:
        >>> p = torch.tensor([[1.0, 0.0]])
        >>> q = torch.tensor([[0.5, 0.5]])
        >>> average_soft_labels([p, q])
        tensor([[0.7500, 0.2500]])
        >>> average_soft_labels([p, q], weights=[3.0, 1.0])
        tensor([[0.8750, 0.1250]])
    """
    if isinstance(distributions, torch.Tensor) or not isinstance(distributions, Sequence):
        raise TypeError(
            "distributions must be a sequence (list or tuple) of tensors, got "
            f"{type(distributions).__name__}"
        )
    if len(distributions) == 0:
        raise ValueError("distributions must hold at least one tensor, got an empty sequence")
    for j, d in enumerate(distributions):
        V.check_floating(f"distributions[{j}]", d)
        V.check_finite(f"distributions[{j}]", d)
        if d.shape != distributions[0].shape:
            raise ValueError(
                f"distributions[{j}] must have the shape of distributions[0] "
                f"{tuple(distributions[0].shape)}, got {tuple(d.shape)}"
            )
    out_dtype = distributions[0].dtype
    for d in distributions[1:]:
        out_dtype = torch.promote_types(out_dtype, d.dtype)
    work = compute_dtype(out_dtype)
    stacked = torch.stack([d.to(work) for d in distributions])
    if weights is None:  # sum_j y_j / n: every partial sum within max |y|, no overflow
        return (stacked / len(distributions)).sum(dim=0).to(out_dtype)
    if isinstance(weights, torch.Tensor):
        V.check_floating("weights", weights)
        w = weights.to(device=stacked.device, dtype=work)
    else:
        if isinstance(weights, str) or not isinstance(weights, Sequence):
            raise TypeError(f"weights must be a sequence of numbers, got {type(weights).__name__}")
        for j, value in enumerate(weights):
            V.check_number(f"weights[{j}]", value, low=0.0)
        w = torch.tensor([float(v) for v in weights], dtype=work, device=stacked.device)
    if w.shape != (len(distributions),):
        raise ValueError(
            f"weights must hold one weight per distribution ({len(distributions)}), "
            f"got shape {tuple(w.shape)}"
        )
    V.check_tensor_values("weights", w, low=0.0, high=math.inf, high_open=True)
    if w.device.type == "cpu" and not bool(w.sum() > 0):
        raise ValueError("weights must not all be zero")
    # normalised first: a convex combination never leaves [min y, max y], so no overflow
    w = (w / w.sum()).view(-1, *([1] * (stacked.dim() - 1)))
    return (stacked * w).sum(0).to(out_dtype)


def aggregate_soft_labels(
    annotations: torch.Tensor,
    num_classes: int,
    methods: Sequence[str] = ("ds", "glad", "mace", "wawa", "zbs", "softmax", "standard"),
    *,
    weights: Sequence[float] | None = None,
    missing: int = -1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Several soft-labelling methods, then their (weighted) average.

    The paper's proposal (Wright & Augenstein, arXiv:2212.09409): compute each method's
    distribution with its defaults and average them (``ensemble_basic``). The default
    ``methods`` are the official default list (the five crowdkit models, ``softmax``
    and ``standard``); names are the keys of :data:`METHODS`. ``seed`` goes to ``mace``.

    Args:
        annotations, num_classes, missing, dtype: the common arguments (module notes).
        methods: non-empty sequence of method names (keys of :data:`METHODS`).
        weights: optional non-negative weights, one per method.
        seed: the seed of MACE's restarts.

    Returns:
        ``(items, K)`` averaged soft labels.

    Example:
        >>> a = torch.tensor([[0, 0, 1], [1, 1, 1]])
        >>> aggregate_soft_labels(a, 2, methods=("standard", "wawa"))
        tensor([[0.7333, 0.2667],
                [0.0000, 1.0000]])
    """
    if isinstance(methods, str) or not isinstance(methods, Sequence) or len(methods) == 0:
        raise ValueError(f"methods must be a non-empty sequence of method names, got {methods!r}")
    for name in methods:
        V.check_choice("methods", name, tuple(METHODS))
    V.check_int("seed", seed)
    V.check_int("num_classes", num_classes, low=1)
    V.check_int("missing", missing)
    # validated and converted to int64 once; each method's own check then finds int64
    annotations = V.check_annotations("annotations", annotations, num_classes, missing)
    outputs = []
    for name in methods:
        options = {"seed": seed} if name == "mace" else {}
        outputs.append(
            METHODS[name](annotations, num_classes, missing=missing, dtype=dtype, **options)
        )
    return average_soft_labels(outputs, weights)
