"""The built-in task of ``softmaxkit report``: a small MLP on scikit-learn's digits.

Classes 0-7 of the bundled digits (no download) are split (seeded) into a small train set
(15%, so that the network overfits and is over-confident, as Guo et al. 2017 found of
modern networks) and a test set; a 64-128-8 ReLU MLP is trained full batch with Adam on one
thread; the report covers the test set (features = the hidden units) with classes 8 and 9
as the out-of-distribution data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from softmaxkit.cli.report_inputs import Data

BUILTIN_HELD_OUT = (8, 9)
BUILTIN_HIDDEN = 128
BUILTIN_EPOCHS = 500
BUILTIN_TRAIN_FRACTION = 0.15  # small: the MLP overfits and is over-confident
BUILTIN_LR = 0.01


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def builtin_images(
    seed: int,
    train_fraction: float = BUILTIN_TRAIN_FRACTION,
    what: str = "the built-in report task",
) -> dict[str, torch.Tensor]:
    """scikit-learn's digits scaled to [0, 1]: ``x_in``/``y_in`` (classes 0-7), ``x_ood``
    (8 and 9), and the seeded ``train``/``test`` row indices of ``x_in``."""
    from softmaxkit.cli._extras import require

    digits = require("sklearn.datasets", what, "report").load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    held_out = torch.isin(y, torch.tensor(BUILTIN_HELD_OUT))
    order = torch.randperm(int((~held_out).sum()), generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * len(order))
    return {
        "x_in": x[~held_out],
        "y_in": y[~held_out],
        "x_ood": x[held_out],
        "train": order[:n_train],
        "test": order[n_train:],
    }


def builtin_task(seed: int = 0) -> tuple[Data, Data, dict[str, Any]]:
    """Digits classes 0-7 (the test split: MLP logits and features) and 8-9 as OOD.

    Returns ``(data, ood, description)``; deterministic for a given ``seed`` (the global
    torch RNG is left untouched).
    """
    images = builtin_images(seed)
    x_in, y_in, x_out = images["x_in"], images["y_in"], images["x_ood"]
    train, test = images["train"], images["test"]
    num_classes = 10 - len(BUILTIN_HELD_OUT)
    # One thread: the model is tiny (threads only contend on a busy machine) and the
    # result does not depend on the machine's core count.
    with _threads(1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            body = nn.Sequential(nn.Linear(x_in.shape[1], BUILTIN_HIDDEN), nn.ReLU())
            head = nn.Linear(BUILTIN_HIDDEN, num_classes)
        params = [*body.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, lr=BUILTIN_LR)
        for _ in range(BUILTIN_EPOCHS):
            loss = nn.functional.cross_entropy(head(body(x_in[train])), y_in[train])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            feats_in, feats_out = body(x_in), body(x_out)
            logits_in, logits_out = head(feats_in), head(feats_out)
    train_acc = (logits_in[train].argmax(1) == y_in[train]).double().mean().item()
    source = "built-in task: scikit-learn digits"
    data = Data(
        logits_in[test], y_in[test], feats_in[test], source + f", classes 0-{num_classes - 1}"
    )
    ood = Data(logits_out, None, feats_out, source + ", classes 8 and 9 (held out)")
    description = {
        "dataset": "scikit-learn load_digits (bundled, 1797 8x8 images, pixels / 16)",
        "in_distribution_classes": list(range(num_classes)),
        "ood_classes": list(BUILTIN_HELD_OUT),
        "n_train": len(train),
        "n_test": len(test),
        "n_ood": len(x_out),
        "model": f"MLP {x_in.shape[1]}-{BUILTIN_HIDDEN}-{num_classes}, ReLU, float32",
        "training": f"full-batch Adam, lr {BUILTIN_LR}, {BUILTIN_EPOCHS} epochs, seed {seed}",
        "features": f"the {BUILTIN_HIDDEN} hidden ReLU units",
        "train_accuracy": train_acc,
    }
    return data, ood, description
