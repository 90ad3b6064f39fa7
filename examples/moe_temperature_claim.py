"""Claim check: "Is Temperature Sample Efficient for Softmax Gaussian MoE?" (Nguyen,
Akbarian, Ho, ICML 2024, arXiv:2401.13875), in miniature.

Setting (exact-specified, the paper's softmax-gated Gaussian MoE): x ~ Uniform[-1, 1]
(d = 1), K = 2 experts, y | x ~ sum_i G(x)_i N(a_i x + b_i, nu_i) with the gate either

- dense-to-sparse: G(x) = softmax(beta_1 x / tau + beta_0), or
- activation (tanh): G(x) = softmax(tanh(beta_1 x) / tau + beta_0),

built from :class:`softmaxkit.moe.DenseToSparseGate` / :class:`softmaxkit.moe.ActivationGate`
with a learned temperature. The last expert's gate parameters are fixed at 0 (softmax's
translation invariance; the usual identifiability convention). For each n we draw data from
the known truth, fit all parameters (beta_1, beta_0 of expert 1, tau, a, b, log nu) by
maximum likelihood (full-batch L-BFGS, started from the truth plus a fixed N(0, 0.3)
perturbation) and measure the MATCHED-PARAMETER error: the smallest, over the 2 expert
permutations, Euclidean distance between fitted and true parameters (this is not the
paper's Voronoi loss, which we did not implement). Two errors are reported:

- ``all``: every parameter including (beta_1, tau);
- ``experts``: the expert parameters (a, b, nu) only.

The rate is the least-squares slope of log(median error over repeats) against log n.

Expectation from the paper: the activation gate's parameters converge at a polynomial rate
(about n^-1/2 here, exact-specified), while with the dense-to-sparse gate, tau and beta_1
interact through tau * d/dtau = -beta_1 * d/dbeta_1 (in d = 1 they are identified only
through beta_1 / tau), so their estimates need not converge at any polynomial rate.

Run: ``PYTHONPATH=src python examples/moe_temperature_claim.py`` (about a minute on one
core); ``--quick`` for the seconds-long version the test runs.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from softmaxkit.moe import ActivationGate, DenseToSparseGate

TRUE = {
    "beta1": 2.0,  # expert 1's gate slope (expert 2: 0)
    "beta0": 0.3,
    "tau": 0.8,
    "a": (1.5, -1.0),
    "b": (0.5, -0.5),
    "nu": (0.3, 0.4),  # variances
}


class GaussianMoE(torch.nn.Module):
    """2-expert softmax-gated Gaussian MoE on d = 1 with one of the two gates."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        cls = ActivationGate if kind == "activation" else DenseToSparseGate
        self.gate = cls(1, 2, learn_temperature=True).double()
        self.a = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.log_nu = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.register_buffer("fixed_mask", torch.tensor([[1.0], [0.0]], dtype=torch.float64))

    def set(self, p: dict) -> None:
        with torch.no_grad():
            self.gate.weight.copy_(torch.tensor([[p["beta1"]], [0.0]]))
            self.gate.bias.copy_(torch.tensor([p["beta0"], 0.0]))
            self.gate.log_temperature.fill_(math.log(p["tau"]))
            self.a.copy_(torch.tensor(p["a"]))
            self.b.copy_(torch.tensor(p["b"]))
            self.log_nu.copy_(torch.tensor(p["nu"]).log())

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # expert 2's gate parameters stay 0 (their gradient is masked in fit())
        weights = self.gate(x[:, None]).combine_weights
        mean = x[:, None] * self.a + self.b
        var = self.log_nu.exp()
        log_normal = -0.5 * ((y[:, None] - mean) ** 2 / var + var.log() + math.log(2 * math.pi))
        return torch.logsumexp(weights.clamp_min(1e-300).log() + log_normal, dim=-1).mean()

    def params(self) -> dict:
        return {
            "beta1": float(self.gate.weight[0, 0].detach()),
            "beta0": float(self.gate.bias[0].detach()),
            "tau": float(self.gate.temperature.detach()),
            "a": tuple(self.a.tolist()),
            "b": tuple(self.b.tolist()),
            "nu": tuple(self.log_nu.exp().tolist()),
        }


def sample(kind: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    model = GaussianMoE(kind)
    model.set(TRUE)
    x = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        w = model.gate(x[:, None]).combine_weights
    z = torch.multinomial(w, 1, generator=gen).squeeze(1)
    a, b, nu = (torch.tensor(TRUE[k], dtype=torch.float64) for k in ("a", "b", "nu"))
    y = a[z] * x + b[z] + nu[z].sqrt() * torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


def fit(kind: str, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict:
    model = GaussianMoE(kind)
    start = dict(TRUE)
    noise = lambda: float(0.3 * torch.randn((), generator=gen, dtype=torch.float64))  # noqa: E731
    start["beta1"] += noise()
    start["beta0"] += noise()
    start["tau"] *= math.exp(noise())
    start["a"] = tuple(v + noise() for v in TRUE["a"])
    start["b"] = tuple(v + noise() for v in TRUE["b"])
    start["nu"] = tuple(v * math.exp(noise()) for v in TRUE["nu"])
    model.set(start)
    opt = torch.optim.LBFGS(
        model.parameters(), max_iter=300, line_search_fn="strong_wolfe", tolerance_grad=1e-10
    )

    def closure():
        opt.zero_grad()
        loss = -model.log_likelihood(x, y)
        loss.backward()
        model.gate.weight.grad.mul_(model.fixed_mask)
        model.gate.bias.grad.mul_(model.fixed_mask[:, 0])
        return loss

    opt.step(closure)
    return model.params()


def errors(fitted: dict) -> dict:
    """Matched-parameter errors (smallest over the expert permutations). Swapping the
    experts also changes the gate's reference expert, so the gate parameters are compared
    only for the identity matching (with 2 experts and a fixed reference expert, a swap
    would flip the sign of beta_1/beta_0); the expert parameters take the best of both."""
    best = math.inf
    for perm in itertools.permutations(range(2)):
        d = sum((fitted[k][perm[i]] - TRUE[k][i]) ** 2 for k in ("a", "b", "nu") for i in range(2))
        best = min(best, d)
    gate = (
        (fitted["beta1"] - TRUE["beta1"]) ** 2
        + (fitted["beta0"] - TRUE["beta0"]) ** 2
        + (fitted["tau"] - TRUE["tau"]) ** 2
    )
    return {"experts": math.sqrt(best), "all": math.sqrt(best + gate)}


def slope(ns: list[int], errs: list[float]) -> float:
    lx = torch.tensor([math.log(n) for n in ns], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errs], dtype=torch.float64)
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def run(ns: list[int], repeats: int, seed: int = 0) -> dict:
    """{kind: {"n": ns, "all": [median errors], "experts": [...], "rate_all": slope,
    "rate_experts": slope}} for kind in ("dense_to_sparse", "activation")."""
    torch.set_num_threads(1)
    out = {}
    for kind in ("dense_to_sparse", "activation"):
        gen = torch.Generator().manual_seed(seed)
        med = {"all": [], "experts": []}
        for n in ns:
            errs = [errors(fit(kind, *sample(kind, n, gen), gen)) for _ in range(repeats)]
            for key in med:
                med[key].append(sorted(e[key] for e in errs)[len(errs) // 2])
        out[kind] = {
            "n": list(ns),
            **med,
            "rate_all": slope(ns, med["all"]),
            "rate_experts": slope(ns, med["experts"]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ns = [200, 800, 3200] if args.quick else [500, 1000, 2000, 4000, 8000, 16000]
    result = run(ns, repeats=3 if args.quick else 7)
    for kind, r in result.items():
        print(f"{kind}: rate(all) {r['rate_all']:+.2f}  rate(experts) {r['rate_experts']:+.2f}")
        for n, ea, ee in zip(r["n"], r["all"], r["experts"]):
            print(f"  n={n:6d}  err(all)={ea:.4f}  err(experts)={ee:.4f}")


if __name__ == "__main__":
    main()
