"""Benchmark case for ``softmaxkit.ood.PALMLoss`` (run with ``softmaxkit bench -k palm``).

PALM's training loss forward + backward (training mode: Sinkhorn, top-k, EMA prototype
update, MLE and prototype-contrastive losses) at the official run's sizes: batch 512 with
2 views (1024 rows), 128 projected features, 10 classes x 6 prototypes, k 5, float32;
``--quick``: batch 128.

The input is the projection head's raw output (B, 2, 128). Baseline: ``F.normalize`` (the
official model's last step) and the plain torch code of the official
``util/loss_functions.py::PALM`` (Sinkhorn in the exp domain, dense (N, K) masks, a top-k
over all K prototypes, the EMA update inside the forward), on its own copy of the same
prototypes; ``PALMLoss`` normalises the rows itself (``normalize=True``). Target:
``PALMLoss`` within 1.2x of it (it adds the log-domain Sinkhorn's log-sum-exps and the
overflow-safe row normalisation; measured about 1.05x in CPU time on one thread). Both
update their prototypes on every call (from the same start, so the checked first calls
agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softmaxkit.cli.bench import Case
from softmaxkit.ood import PALMLoss

BATCH, VIEWS, DIM, CLASSES, CACHE, K = 512, 2, 128, 10, 6, 5
QUICK_BATCH = 128
PROTO_M, TEMP, EPS, ITERS = 0.999, 0.1, 0.05, 3


class OfficialPALM:
    """The official loss's arithmetic in plain torch (its own prototype tensor)."""

    def __init__(self, protos: torch.Tensor) -> None:
        self.protos = protos.clone()
        labels = torch.arange(CLASSES).repeat(CACHE)
        self.proto_labels = labels.view(-1, 1)

    def sinkhorn(self, feats: torch.Tensor) -> torch.Tensor:
        q = torch.exp((feats @ self.protos.detach().T).detach() / EPS).t()
        n_protos, n = q.shape
        q = q / q.sum()
        for _ in range(ITERS):
            q = F.normalize(q, dim=1, p=1) / n_protos
            q = F.normalize(q, dim=0, p=1) / n
        return (q * n).t()

    def __call__(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        feats = torch.cat(torch.unbind(features, dim=1), dim=0)
        anchor = targets.repeat(features.shape[1]).view(-1, 1)
        mask = torch.eq(anchor, self.proto_labels.T).float()
        q = self.sinkhorn(feats)
        update = mask * q
        top = torch.topk(update, K, dim=1).indices
        top_mask = torch.zeros_like(update).scatter(1, top, 1)
        update = F.normalize(F.normalize(top_mask * update, dim=1, p=1), dim=0, p=1)
        protos = PROTO_M * self.protos + (1 - PROTO_M) * (update.T @ feats)
        self.protos = F.normalize(protos, dim=1)
        q = self.sinkhorn(feats)
        logits = feats @ self.protos.detach().T / TEMP
        top = torch.topk(update, K, dim=1).indices
        top_mask = torch.zeros_like(update).scatter(1, top, 1)
        weights = F.normalize(top_mask * mask * q, dim=1, p=1)
        mle = -((weights * logits).sum(1) - torch.log(torch.exp(logits).sum(1))).mean()
        p = F.normalize(self.protos, dim=1)
        same = torch.eq(self.proto_labels, self.proto_labels.T).float()
        dots = p @ p.T / 0.5
        dots = dots - dots.max(1, keepdim=True).values.detach()
        not_self = 1 - torch.eye(len(p))
        same = same * not_self
        pos = (F.normalize(same, dim=1, p=1) * dots).sum(1)
        neg = torch.log((not_self * torch.exp(dots)).sum(1))
        pcon = -(pos - neg).mean()
        self.protos = self.protos.detach()
        return mle + pcon


def _setup(quick: bool) -> tuple[torch.Tensor, torch.Tensor, PALMLoss, OfficialPALM]:
    batch = QUICK_BATCH if quick else BATCH
    torch.manual_seed(0)
    crit = PALMLoss(CLASSES, DIM, cache_size=CACHE, k=K, proto_m=PROTO_M)
    official = OfficialPALM(crit.prototypes)
    feats = torch.randn(batch, VIEWS, DIM).requires_grad_()
    labels = torch.randint(CLASSES, (batch,))
    return feats, labels, crit, official


def ours(feats: torch.Tensor, labels: torch.Tensor, crit: PALMLoss, _: OfficialPALM):
    return crit(feats, labels).loss


def official(feats: torch.Tensor, labels: torch.Tensor, _: PALMLoss, base: OfficialPALM):
    return base(F.normalize(feats, dim=-1), labels)


CASES = [
    Case(
        name=f"ood.PALMLoss/{BATCH}x{VIEWS}x{DIM}:C{CLASSES}x{CACHE}k{K}",
        setup=_setup,
        ours=ours,
        baseline=official,
        baseline_name="plain torch transcription of the official PALM loss",
        targets={"time_fwdbwd": 1.2},
        atol=1e-4,
    ),
]
