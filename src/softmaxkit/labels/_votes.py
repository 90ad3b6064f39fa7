"""The start of every soft-labelling method: checked annotations as one-hot votes."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from softmaxkit import _validation as V
from softmaxkit._ops.blocks import compute_dtype


class Votes(NamedTuple):
    """Annotations ``(items, annotators)`` as votes in the working dtype ``work``.

    Attributes:
        onehot: ``(items, annotators, classes)`` one-hot answers, all 0 where missing.
        observed: ``(items, annotators)`` bool, True where an annotator answered.
        work: the compute dtype of the output ``dtype`` (float32 for half types).
        answers: ``(items, annotators)`` int64 answers, 0 where missing.
    """

    onehot: torch.Tensor
    observed: torch.Tensor
    work: torch.dtype
    answers: torch.Tensor


def votes(
    annotations: torch.Tensor,
    num_classes: int,
    missing: int,
    dtype: torch.dtype,
    *,
    min_classes: int = 1,
) -> Votes:
    """Check the arguments every method shares, then one-hot the given answers."""
    V.check_int("num_classes", num_classes, low=min_classes)
    V.check_int("missing", missing)
    annotations = V.check_annotations("annotations", annotations, num_classes, missing)
    V.check_floating_dtype("dtype", dtype)
    work = compute_dtype(dtype)
    observed = annotations != missing
    answers = torch.where(observed, annotations, torch.zeros_like(annotations))
    onehot = F.one_hot(answers, num_classes).to(work) * observed.unsqueeze(-1).to(work)
    return Votes(onehot, observed, work, answers)
