"""Float64 NumPy transcriptions of the crowd soft-labelling methods and the top-two algorithm.

Written from the sources one annotation at a time (lists of (item, annotator, label)
triples, Python loops), sharing nothing with softmaxkit:

- ``standard`` / ``softmax``: ``normalized_distribution`` / ``softmax_distribution`` of
  copenlu/aggregating-crowd-annotations-ood (Wright & Augenstein, arXiv:2212.09409);
- Dawid-Skene, GLAD, MACE, Wawa, ZeroBasedSkill: the EM / update rules of crowdkit's
  ``aggregation/classification`` (GLAD's M-step with scipy's conjugate gradient, as
  crowdkit does; MACE from given starting points);
- ``top_two``: ``run_TopTwo1.m`` / ``run_TopTwo2.m`` of Hyeonsu-Jeong/TopTwo (Jeong &
  Chung, ICML 2023, arXiv:2301.00006), with the first-stage estimate of g in the
  estimate of q.

Items nobody annotated get uniform rows (softmaxkit's documented convention).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, expit, logsumexp

EPS = 1e-10


def triples(annotations, missing=-1):
    a = np.asarray(annotations)
    return [
        (i, m, int(a[i, m]))
        for i in range(a.shape[0])
        for m in range(a.shape[1])
        if a[i, m] != missing
    ]


def _annotated(annotations, missing):
    return (np.asarray(annotations) != missing).any(axis=1)


def _counts(annotations, k, missing=-1):
    a = np.asarray(annotations)
    counts = np.zeros((a.shape[0], k))
    for i, _, label in triples(a, missing):
        counts[i, label] += 1
    return counts


def _rows(scores):
    out = np.empty_like(scores)
    for i, row in enumerate(scores):
        total = row.sum()
        out[i] = row / total if total > 0 else 1.0 / len(row)
    return out


def _uniform_unannotated(probs, annotations, missing):
    probs = probs.copy()
    probs[~_annotated(annotations, missing)] = 1.0 / probs.shape[1]
    return probs


def standard(annotations, k, missing=-1):
    return _rows(_counts(annotations, k, missing))


def softmax(annotations, k, temperature=1.0, missing=-1):
    c = _counts(annotations, k, missing) / temperature
    e = np.exp(c - c.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- Dawid-Skene ---------------------------------------------------------------------


def dawid_skene(annotations, k, n_iter=100, tol=1e-5, missing=-1):
    """Returns (posteriors, errors[m, true, observed], priors, iterations)."""
    a = np.asarray(annotations)
    n, n_ann = a.shape
    data = triples(a, missing)
    annotated = _annotated(a, missing)

    def m_step(post):
        errors = np.zeros((n_ann, k, k))
        for i, m, label in data:
            errors[m, :, label] += post[i]
        errors = np.maximum(errors, EPS)
        return errors / errors.sum(axis=2, keepdims=True)

    def prior_of(post):
        return post[annotated].mean(axis=0)

    def e_step(priors, errors):
        log_lik = np.tile(np.log(np.maximum(priors, EPS)), (n, 1))
        for i, m, label in data:
            log_lik[i] += np.log(errors[m, :, label])
        return np.exp(log_lik - logsumexp(log_lik, axis=1, keepdims=True))

    def elbo(post, priors, errors):
        log_joint = np.tile(np.log(np.maximum(priors, EPS)), (n, 1))
        for i, m, label in data:
            log_joint[i] += np.log(errors[m, :, label])
        total = 0.0
        for i in np.flatnonzero(annotated):
            total += float(post[i] @ log_joint[i])
            total -= float(post[i] @ np.log(np.maximum(post[i], EPS)))
        return total / len(data)

    post = standard(a, k, missing)
    priors = prior_of(post)
    errors = m_step(post)
    loss = -math.inf
    iterations = 0
    while iterations < n_iter:
        iterations += 1
        post = e_step(priors, errors)
        priors = prior_of(post)
        errors = m_step(post)
        new = elbo(post, priors, errors)
        if new - loss < tol:
            break
        loss = new
    return _uniform_unannotated(post, a, missing), errors, priors, iterations


# ---- GLAD ----------------------------------------------------------------------------


def glad(annotations, k, n_iter=100, tol=1e-5, m_step_max_iter=25, m_step_tol=1e-2, missing=-1):
    a = np.asarray(annotations)
    n, n_ann = a.shape
    data = triples(a, missing)
    log_k1 = math.log(k - 1)

    def e_step(alpha, beta):
        log_post = np.full((n, k), -math.log(k))
        for i, m, label in data:
            x = alpha[m] * math.exp(beta[i])
            log_sig = -np.logaddexp(0.0, -x)
            log_not = -np.logaddexp(0.0, x) - log_k1
            for c in range(k):
                log_post[i, c] += log_sig if c == label else log_not
        return np.exp(log_post - logsumexp(log_post, axis=1, keepdims=True))

    def q_and_grad(x, post):
        alpha, beta = x[:n_ann], x[n_ann:]
        q = 0.0
        d_alpha = np.zeros(n_ann)
        d_beta = np.zeros(n)
        for i, m, label in data:
            z = alpha[m] * math.exp(beta[i])
            sig = expit(z)
            p = post[i, label]
            q += p * -np.logaddexp(0.0, -z) + (1 - p) * (-np.logaddexp(0.0, z) - log_k1)
            d_alpha[m] += (p - sig) * math.exp(beta[i])
            d_beta[i] += (p - sig) * alpha[m] * math.exp(beta[i])
        q += np.sum(-0.5 * (alpha - 1) ** 2 - 0.5 * math.log(2 * math.pi))
        q += np.sum(-0.5 * (beta - 1) ** 2 - 0.5 * math.log(2 * math.pi))
        d_alpha -= alpha - 1
        d_beta -= beta - 1
        return q, np.concatenate([d_alpha, d_beta])

    alpha, beta = np.ones(n_ann), np.ones(n)
    post = e_step(alpha, beta)
    last = -math.inf
    for _ in range(n_iter):
        post = e_step(alpha, beta)
        res = minimize(
            lambda x, post=post: -q_and_grad(x, post)[0],
            np.concatenate([alpha, beta]),
            jac=lambda x, post=post: -q_and_grad(x, post)[1],
            method="CG",
            tol=m_step_tol,
            options={"maxiter": m_step_max_iter},
        )
        alpha, beta = res.x[:n_ann], res.x[n_ann:]
        q = q_and_grad(res.x, post)[0] / (len(data) * k)
        if q - last < tol:
            break
        last = q
    return _uniform_unannotated(post, a, missing)


# ---- MACE ----------------------------------------------------------------------------


def mace(
    annotations,
    k,
    spam0,
    strategy0,
    n_iter=50,
    method="vb",
    smoothing=None,
    alpha=0.5,
    beta=0.5,
    missing=-1,
):
    """MACE from given starts: spam0 (R, M, 2) [spamming, knowing], strategy0 (R, M, K)."""
    a = np.asarray(annotations)
    n, n_ann = a.shape
    data = triples(a, missing)
    annotated = _annotated(a, missing)
    smooth = 0.01 / k if smoothing is None else smoothing

    def e_step(spam, strategy):
        gold = np.full((n, k), 1.0 / k)
        for i, m, label in data:
            for t in range(k):
                gold[i, t] *= spam[m, 0] * strategy[m, label] + spam[m, 1] * (t == label)
        instance = gold.sum(axis=1)
        lml = float(np.sum(np.log(instance[annotated] + 1e-8)))
        strat = np.zeros((n_ann, k))
        know = np.zeros((n_ann, 2))
        for i, m, label in data:
            spam_part = spam[m, 0] * strategy[m, label]
            s = 0.0
            for t in range(k):
                s += gold[i, t] / (spam_part + spam[m, 1] * (t == label))
            s = s * spam_part / instance[i]
            strat[m, label] += s
            know[m, 0] += s
            know[m, 1] += gold[i, label] * spam[m, 1] / (spam_part + spam[m, 1]) / instance[i]
        return lml, gold / instance[:, None], strat, know

    def vb(counts, prior):
        x = counts + prior
        return np.exp(digamma(x)) / np.exp(digamma(x.sum(axis=1, keepdims=True)))

    best, best_post = -math.inf, None
    for r in range(spam0.shape[0]):
        spam, strategy = spam0[r].copy(), strategy0[r].copy()
        lml, post, strat, know = e_step(spam, strategy)
        for _ in range(n_iter):
            if method == "vb":
                spam = vb(know, np.array([alpha, beta]))
                strategy = vb(strat, 10.0)
            else:
                spam = (know + smooth) / (know + smooth).sum(axis=1, keepdims=True)
                strategy = (strat + smooth) / (strat + smooth).sum(axis=1, keepdims=True)
            lml, post, strat, know = e_step(spam, strategy)
        if lml > best:
            best, best_post = lml, post
    return _uniform_unannotated(best_post, a, missing)


# ---- Wawa and ZeroBasedSkill ------------------------------------------------------------


def _weighted(annotations, k, skills, missing):
    scores = np.zeros((np.asarray(annotations).shape[0], k))
    for i, m, label in triples(annotations, missing):
        scores[i, label] += skills[m]
    return scores


def _accuracy(annotations, labels, missing):
    a = np.asarray(annotations)
    hits, total = np.zeros(a.shape[1]), np.zeros(a.shape[1])
    for i, m, label in triples(a, missing):
        total[m] += 1
        hits[m] += label == labels[i]
    return np.where(total > 0, hits / np.maximum(total, 1), 0.0)


def wawa(annotations, k, missing=-1):
    labels = np.argmax(_counts(annotations, k, missing), axis=1)
    skills = _accuracy(annotations, labels, missing)
    return _rows(_weighted(annotations, k, skills, missing))


def zero_based_skill(
    annotations,
    k,
    n_iter=100,
    lr_init=1.0,
    lr_steps_to_reduce=20,
    lr_reduce_factor=0.5,
    eps=1e-5,
    missing=-1,
):
    a = np.asarray(annotations)
    present = len({label for _, _, label in triples(a, missing)})
    skills = np.full(a.shape[1], 1.0 / present + eps)
    lr = lr_init
    for step in range(1, n_iter + 1):
        if step % lr_steps_to_reduce == 0:
            lr *= lr_reduce_factor
        labels = np.argmax(_weighted(a, k, skills, missing), axis=1)
        skills = skills + lr * (_accuracy(a, labels, missing) - skills)
    return _rows(_weighted(a, k, skills, missing))


# ---- top-two (Jeong & Chung 2023) -------------------------------------------------------


def top_two(annotations, k, missing=-1, p_known=None, q_known=None):
    """Returns (g, h, q, p) following run_TopTwo1.m then run_TopTwo2.m."""
    a = np.asarray(annotations)
    y = np.where(a == missing, 0, a + 1).T.astype(np.float64)  # workers x tasks, 1..K
    n_workers, n_tasks = y.shape
    s = np.count_nonzero(y) / y.size
    shifted = np.zeros((k, n_workers, n_tasks))
    us = np.zeros((k - 1, n_workers))
    for kk in range(1, k):
        b = y.copy()
        b[(y >= 1) & (y <= kk)] = -1
        b[y > kk] = 1
        b = b - s * (k - 2 * kk) / k
        u = np.linalg.svd(b)[0][:, 0]
        us[kk - 1] = u if u.sum() > 0 else -u
        shifted[kk] = b
    avg_u = np.clip(us.mean(axis=0), 0, 1)
    w = np.zeros((n_tasks, k + 1))
    for kk in range(1, k):
        w[:, kk] = shifted[kk].T @ avg_u / (2 * s)
    del_w = w[:, 1:] - w[:, :-1]
    g = np.zeros(n_tasks, dtype=np.int64)
    h = np.zeros(n_tasks, dtype=np.int64)
    for j in range(n_tasks):
        order = np.argsort(del_w[j], kind="stable")
        g[j], h[j] = order[0], order[1]
    if p_known is None:
        p = np.zeros(n_workers)
        for i in range(n_workers):
            answered = y[i] > 0
            hits = np.sum((y[i] == g + 1) | (y[i] == h + 1))
            p[i] = (hits / answered.sum() - 2 / k) / (1 - 2 / k) if answered.any() else 0.001
        p = np.clip(p, 0.001, 0.999)
    else:
        p = np.asarray(p_known, dtype=np.float64)
    if q_known is None:
        q = np.array([1 / k - del_w[j, g[j]] / np.linalg.norm(p) for j in range(n_tasks)])
        q = np.clip(q, 0.501, 0.999)
    else:
        q = np.asarray(q_known, dtype=np.float64)
    g2 = np.zeros(n_tasks, dtype=np.int64)
    h2 = np.zeros(n_tasks, dtype=np.int64)
    for j in range(n_tasks):
        first = np.log(k * q[j] * (p / (1 - p)) + 1)
        second = np.log(k * (1 - q[j]) * (p / (1 - p)) + 1)
        sum_g, sum_h = np.zeros(k), np.zeros(k)
        for i in range(n_workers):
            if y[i, j] != 0:
                sum_g[int(y[i, j]) - 1] += first[i]
                sum_h[int(y[i, j]) - 1] += second[i]
        best = -math.inf
        for x in range(k):
            for z in range(k):
                if x != z and best < sum_g[x] + sum_h[z]:
                    best = sum_g[x] + sum_h[z]
                    g2[j], h2[j] = x, z
    return g2, h2, q, p


def simulate_top_two(n_items, n_workers, k, p, q, rng, observe=1.0, missing=-1):
    """Generate_TopTwo_Dataset.m: returns (annotations items x workers, g, h)."""
    g = rng.integers(0, k, n_items)
    h = rng.integers(0, k - 1, n_items)
    h = np.where(h >= g, h + 1, h)
    ann = np.full((n_items, n_workers), missing, dtype=np.int64)
    for j in range(n_items):
        for i in range(n_workers):
            if rng.random() >= observe:
                continue
            probs = np.full(k, (1 - p[i]) / k)
            probs[g[j]] += p[i] * q[j]
            probs[h[j]] += p[i] * (1 - q[j])
            ann[j, i] = rng.choice(k, p=probs)
    return ann, g, h
