"""Claim check for MaskLLM (Fang et al., NeurIPS 2024, arXiv:2409.17481, Table 1 direction):
with the weights frozen, a learned 2:4 mask loses less than one-shot magnitude 2:4 pruning.

A small MLP (64 -> 128 -> 128 -> 10) is trained dense on scikit-learn's digits, then frozen.
Every linear layer is pruned 2:4 two ways: by magnitude, and by MaskLLM's learned mask
(``softmaxkit.sparsity.apply_nm_masks``, magnitude prior, the official schedules, trained on
the train split with the task loss + the regulariser, the weights frozen). Test accuracy and
loss of the dense, magnitude and learned models are printed for several seeds.

Run: ``PYTHONPATH=src python examples/maskllm_claim.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit.sparsity import apply_nm_masks, is_nm_sparse, magnitude_nm_mask


def load_digits_array():
    """scikit-learn's digits (1797 8x8 images, 10 classes) as (X, y) numpy arrays.

    Read straight from the CSV that scikit-learn ships (what ``load_digits`` reads), which
    spares the seconds-long ``import sklearn``; falls back to ``load_digits``."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ModuleNotFoundError("the claim check needs scikit-learn's digits data set")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.exists():
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target


def load_digits_split(seed: int = 0):
    data, target = load_digits_array()
    x = torch.tensor(data, dtype=torch.float32) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.7 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def make_mlp(hidden: int = 128, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float((logits.argmax(-1) == y).float().mean()), float(F.cross_entropy(logits, y))


def train_dense(model, x, y, epochs: int, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def magnitude_prune(model: nn.Module) -> nn.Module:
    pruned = make_mlp(model[0].out_features)
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in pruned:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(magnitude_nm_mask(layer.weight, 2, 4))
    return pruned


def learn_mask(model, x, y, steps: int, lr: float, seed: int, weight_reg: float = 1e-5):
    masked = make_mlp(model[0].out_features)
    masked.load_state_dict(model.state_dict())
    learner = apply_nm_masks(
        masked,
        2,
        4,
        weight_reg=weight_reg,
        total_steps=steps,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = torch.optim.AdamW(learner.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    masked.train()
    batches = iter(())
    for _ in range(steps):
        idx = next(batches, None)
        if idx is None:
            batches = iter(torch.randperm(len(y), generator=gen).split(128))
            idx = next(batches)
        loss = F.cross_entropy(masked(x[idx]), y[idx]) + learner.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.step()
    masks, _ = learner.export()
    assert all(bool(is_nm_sparse(mk, 2, 4)) for mk in masks.values())
    learner.remove(apply_masks=True)
    return masked


def run(seeds=(0, 1, 2), epochs: int = 60, steps: int = 1500, lr: float = 1e-3, hidden=128):
    (xtr, ytr), (xte, yte) = load_digits_split()
    rows = []
    for seed in seeds:
        dense = make_mlp(hidden, seed)
        train_dense(dense, xtr, ytr, epochs, seed)
        for p in dense.parameters():
            p.requires_grad_(False)
        rows.append(
            {
                "seed": seed,
                "dense": evaluate(dense, xte, yte),
                "magnitude": evaluate(magnitude_prune(dense), xte, yte),
                "learned": evaluate(learn_mask(dense, xtr, ytr, steps, lr, seed), xte, yte),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest (and robust to a busy CPU)
    rows = run(tuple(range(args.seeds)), steps=args.steps, lr=args.lr)
    print("seed | dense acc / loss | magnitude 2:4 acc / loss | learned 2:4 acc / loss")
    for r in rows:
        d, mg, ln = r["dense"], r["magnitude"], r["learned"]
        print(
            f"{r['seed']:4d} | {d[0]:.4f} / {d[1]:.4f} | {mg[0]:.4f} / {mg[1]:.4f} | "
            f"{ln[0]:.4f} / {ln[1]:.4f}"
        )
    mean = {
        k: [sum(r[k][i] for r in rows) / len(rows) for i in (0, 1)] for k in rows[0] if k != "seed"
    }
    print(
        "mean | "
        + " | ".join(
            f"{mean[k][0]:.4f} / {mean[k][1]:.4f}" for k in ("dense", "magnitude", "learned")
        )
    )


if __name__ == "__main__":
    main()
