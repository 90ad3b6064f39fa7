"""The fused heads and weight-taking losses under FSDP2 (``fully_shard``) on 2 gloo processes.

A tiny model (Linear -> tanh -> lm_head, no embedding) is wrapped with ``fully_shard`` in
three ways: the root only (the loss runs inside the root's forward, where FSDP has
unsharded every weight: plain tensors), ``lm_head`` as its own unit with the loss in the
root's forward (``self.lm_head.weight`` is then the sharded DTensor), and every layer its own
unit with the loss called outside any forward (``model.lm_head.weight``, a sharded
DTensor). Each rank trains two SGD steps on its own batch; the mean of the ranks' losses and
the full gradients (``grad.full_tensor()``) must equal one process on the concatenated batch
(float64, to rounding), which checks that the all-gather of a sharded weight
(:mod:`softmaxkit._ops.dtensor`) gives back FSDP's averaged gradient. Also: a
``fully_shard``-ed ``LinearCrossEntropy`` (and its ``logits`` method, outside forward),
``VQLogits.cross_entropy`` called outside the head's forward (sharded codebook),
``VQLogits.from_linear`` of a sharded ``nn.Linear``, ``normalized_softmax_loss`` with
sharded class proxies, and the TypeErrors for DTensor activations and logits. The
vocabulary (11) splits unevenly (6 + 5 rows per shard).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh  # imported here: the forkserver
from torch.distributed.fsdp import fully_shard  # preloads them once for all ranks
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from softmaxkit._ops.dtensor import is_dtensor
from softmaxkit.distributed import vocab_parallel_cross_entropy
from softmaxkit.heads import LinearCrossEntropy, VQLogits, linear_cross_entropy
from softmaxkit.losses import cosine_logits, normalized_softmax_loss, stablemax_cross_entropy
from tests.distributed.launch import spawn

D_IN, D, V, K = 5, 6, 11, 4
WORLD = 2
SCENARIOS = ["root", "lm_head_unit", "outside"]
TOL = {"atol": 1e-10, "rtol": 1e-10}


class Tiny(nn.Module):
    """Embedding-free language-model stand-in: hidden = tanh(body(x)), logits = lm_head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(D_IN, D)
        self.lm_head = nn.Linear(D, V)
        self.saw_dtensor = False

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        if y is None:
            return h
        self.saw_dtensor = is_dtensor(self.lm_head.weight)
        return linear_cross_entropy(h, self.lm_head.weight, y, linear_bias=self.lm_head.bias)


def _tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().double()


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(3, 2, D_IN, generator=g, dtype=torch.float64), torch.randint(
        0, V, (3, 2), generator=g
    )


def _hidden(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(50 + rank)
    return torch.randn(5, D, generator=g, dtype=torch.float64), torch.randint(
        0, V, (5,), generator=g
    )


def _vq():
    return VQLogits(D, V, K, bias=True, generator=torch.Generator().manual_seed(3)).double()


class Proxies(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.weight = nn.Parameter(torch.randn(V, D, dtype=torch.float64))


def _train(model: Tiny, rank: int, outside: bool) -> dict:
    """Two SGD steps on this rank's batches; the losses and each step's full gradients."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out: dict = {"loss": [], "grads": [], "dtensor": []}
    for step in range(2):
        x, y = _batch(rank, step)
        if outside:
            h = model(x)
            w, b = model.lm_head.weight, model.lm_head.bias
            out["dtensor"].append(is_dtensor(w))
            with torch.no_grad():
                out.setdefault("no_grad", []).append(linear_cross_entropy(h, w, y, linear_bias=b))
            loss = linear_cross_entropy(h, w, y, linear_bias=b)
        else:
            loss = model(x, y)
            out["dtensor"].append(model.saw_dtensor)
        loss.backward()
        out["loss"].append(loss.detach())
        out["grads"].append({n: p.grad.full_tensor() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    return out


def _checks(rank: int, world: int) -> dict:
    mesh = init_device_mesh("cpu", (world,))
    out: dict = {}
    for scenario in SCENARIOS:
        model = _tiny()
        if scenario != "root":
            fully_shard(model.lm_head, mesh=mesh)
        if scenario == "outside":
            fully_shard(model.body, mesh=mesh)
        fully_shard(model, mesh=mesh)
        out[scenario] = _train(model, rank, outside=scenario == "outside")

    h, y = _hidden(rank)
    # a fully_shard-ed LinearCrossEntropy: its forward sees the unsharded weight
    torch.manual_seed(2)
    head = LinearCrossEntropy(D, V, bias=True, label_smoothing=0.1, dtype=torch.float64)
    fully_shard(head, mesh=mesh)
    x = h.clone().requires_grad_(True)
    loss = head(x, y)
    loss.backward()
    grads = (head.weight.grad.full_tensor(), head.bias.grad.full_tensor())
    out["head"] = (loss.detach(), x.grad, *grads)
    out["head_logits"] = head.logits(h)  # not forward: the sharded weight is all-gathered

    # VQLogits.cross_entropy is not forward: FSDP leaves the codebook sharded
    vq = _vq()
    fully_shard(vq, mesh=mesh)
    x = h.clone().requires_grad_(True)
    loss = vq.cross_entropy(x, y)
    loss.backward()
    out["vq"] = (loss.detach(), x.grad, vq.codebook.grad.full_tensor(), vq.bias.grad.full_tensor())

    # VQLogits.from_linear of a fully_shard-ed nn.Linear: k-means of the all-gathered rows
    torch.manual_seed(6)
    lin = nn.Linear(D, V).double()
    fully_shard(lin, mesh=mesh)
    built = VQLogits.from_linear(lin, K, generator=torch.Generator().manual_seed(7))
    out["vq_init"] = (built.codebook.detach(), built.mapping, built.bias.detach())

    # normalized softmax with sharded class proxies, called outside the module's forward
    proxies = Proxies()
    fully_shard(proxies, mesh=mesh)
    x = h.clone().requires_grad_(True)
    loss = normalized_softmax_loss(x, proxies.weight, y, temperature=0.5)
    loss.backward()
    out["proxies"] = (loss.detach(), x.grad, proxies.weight.grad.full_tensor())

    # DTensor activations and logits: a TypeError that names the fix
    errors = {}
    dt_h = distribute_tensor(h, mesh, [Replicate()])
    w = torch.randn(V, D, dtype=torch.float64)
    dt_z = distribute_tensor(h @ w.T, mesh, [Shard(1)])
    for name, call in {
        "linear_ce_input": lambda: linear_cross_entropy(dt_h, w, y),
        "vp_logits": lambda: vocab_parallel_cross_entropy(dt_z, y, group=mesh),
        "loss_logits": lambda: stablemax_cross_entropy(dt_z, y),
    }.items():
        try:
            call()
            errors[name] = None
        except TypeError as e:
            errors[name] = str(e)
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return spawn(_checks, WORLD, str(tmp_path_factory.mktemp("fsdp")))


def _reference_train() -> dict:
    """One process, the concatenated batch, the same two SGD steps (plain F.cross_entropy)."""
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out: dict = {"loss": [], "grads": []}
    for step in range(2):
        xs, ys = zip(*(_batch(r, step) for r in range(WORLD)), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        loss = F.cross_entropy(model.lm_head(model(x)).reshape(-1, V), y.reshape(-1))
        loss.backward()
        out["loss"].append(loss.detach())
        out["grads"].append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
    return out


def _full_hidden() -> tuple[torch.Tensor, torch.Tensor]:
    hs, ys = zip(*(_hidden(r) for r in range(WORLD)), strict=True)
    return torch.cat(hs).requires_grad_(True), torch.cat(ys)


def _mean_loss(results, key, index=None) -> torch.Tensor:
    values = [res[key] if index is None else res[key][index] for res in results]
    return torch.stack([v if isinstance(v, torch.Tensor) else v[0] for v in values]).mean()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_training_matches_one_process(ranks, scenario):
    ref = _reference_train()
    for res in ranks:
        # the path under test: a sharded DTensor weight except inside the root's forward
        assert res[scenario]["dtensor"] == [scenario != "root"] * 2
    for step in range(2):
        loss = torch.stack([res[scenario]["loss"][step] for res in ranks]).mean()
        torch.testing.assert_close(loss, ref["loss"][step], **TOL)
        for res in ranks:
            for name, grad in res[scenario]["grads"][step].items():
                torch.testing.assert_close(grad, ref["grads"][step][name], **TOL, msg=name)
            if scenario == "outside":
                torch.testing.assert_close(
                    res[scenario]["no_grad"][step], res[scenario]["loss"][step], **TOL
                )


def test_linear_cross_entropy_module(ranks):
    torch.manual_seed(2)
    head = LinearCrossEntropy(D, V, bias=True, label_smoothing=0.1, dtype=torch.float64)
    x, y = _full_hidden()
    loss = F.cross_entropy(head.logits(x), y, label_smoothing=0.1)
    loss.backward()
    rows = x.shape[0] // WORLD
    torch.testing.assert_close(torch.stack([r["head"][0] for r in ranks]).mean(), loss, **TOL)
    for r, res in enumerate(ranks):
        # each rank's input gradient is of its own mean loss: WORLD times the global one
        torch.testing.assert_close(res["head"][1], WORLD * x.grad[r * rows : (r + 1) * rows], **TOL)
        torch.testing.assert_close(res["head"][2], head.weight.grad, **TOL)
        torch.testing.assert_close(res["head"][3], head.bias.grad, **TOL)
        torch.testing.assert_close(res["head_logits"], head.logits(x[r * rows : (r + 1) * rows]))


def test_vq_logits_cross_entropy_outside_forward(ranks):
    vq = _vq()
    x, y = _full_hidden()
    loss = F.cross_entropy(vq(x), y)
    loss.backward()
    rows = x.shape[0] // WORLD
    torch.testing.assert_close(torch.stack([r["vq"][0] for r in ranks]).mean(), loss, **TOL)
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["vq"][1], WORLD * x.grad[r * rows : (r + 1) * rows], **TOL)
        torch.testing.assert_close(res["vq"][2], vq.codebook.grad, **TOL)
        torch.testing.assert_close(res["vq"][3], vq.bias.grad, **TOL)


def test_vq_logits_from_a_sharded_linear(ranks):
    torch.manual_seed(6)
    built = VQLogits.from_linear(
        nn.Linear(D, V).double(), K, generator=torch.Generator().manual_seed(7)
    )
    for res in ranks:
        codebook, mapping, bias = res["vq_init"]
        torch.testing.assert_close(codebook, built.codebook.detach(), **TOL)
        assert torch.equal(mapping, built.mapping)
        torch.testing.assert_close(bias, built.bias.detach(), **TOL)


def test_normalized_softmax_with_sharded_proxies(ranks):
    proxies = Proxies()
    x, y = _full_hidden()
    loss = F.cross_entropy(cosine_logits(x, proxies.weight, temperature=0.5), y)
    loss.backward()
    torch.testing.assert_close(torch.stack([r["proxies"][0] for r in ranks]).mean(), loss, **TOL)
    for res in ranks:
        torch.testing.assert_close(res["proxies"][2], proxies.weight.grad, **TOL)


def test_dtensor_activations_raise_a_type_error_naming_the_fix(ranks):
    for res in ranks:
        errors = res["errors"]
        assert errors["linear_ce_input"] is not None
        assert "input must be a plain torch.Tensor" in errors["linear_ce_input"]
        assert "input.full_tensor()" in errors["linear_ce_input"]
        assert errors["vp_logits"] is not None
        assert "local_logits.to_local()" in errors["vp_logits"]
        assert "group=local_logits.device_mesh" in errors["vp_logits"]
        assert "logits.full_tensor()" in errors["loss_logits"]
        assert "vocab_parallel_cross_entropy(logits.to_local()" in errors["loss_logits"]
