"""``DeviceMesh`` dimensions as the ``group`` of the vocab-parallel functions (4 gloo ranks).

On a 2-D mesh ``("dp", "tp") = (2, 2)`` each data-parallel pair has its own rows and splits
the vocabulary over "tp"; ``group=mesh["tp"]``, ``group=(mesh, "tp")`` and
``group=(mesh, 1)`` must give exactly (bitwise) what ``group=mesh.get_group("tp")`` (the
``ProcessGroup`` path) gives, and that must equal ``F.cross_entropy`` /
``torch.log_softmax`` of one process over the whole vocabulary. On a 1-D mesh of the 4
ranks, ``group=mesh`` equals ``group=None``; the shard of a ``Shard(1)`` DTensor with
``group=dt.device_mesh`` (the fix named by the DTensor error) equals the reference. HSDP
(``fully_shard`` on the 2-D mesh) with the fused loss called outside the head's forward
gives one process's gradient on the 4 ranks' concatenated batch. Bad ``group`` values raise
on every rank before any collective.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh  # imported here: the forkserver
from torch.distributed.fsdp import fully_shard  # preloads them once for all ranks
from torch.distributed.tensor import Shard, distribute_tensor

from softmaxkit._ops.dtensor import is_dtensor
from softmaxkit.distributed import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
    vocab_parallel_log_softmax,
)
from softmaxkit.heads import linear_cross_entropy
from tests.distributed.launch import spawn

N, V, D = 6, 10, 4
WORLD, DP, TP = 4, 2, 2
TOL = {"atol": 1e-10, "rtol": 1e-10}
FORMS = ["sub_mesh", "mesh_name", "mesh_index", "process_group"]


def _data(dp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, V), target (N,), hidden (N, D), weight (V, D)) of data-parallel rank dp."""
    g = torch.Generator().manual_seed(dp)
    z = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, V, (N,), generator=g)
    y[1] = -100
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(V, D, generator=g, dtype=torch.float64)
    return z, y, h, w


def _head() -> nn.Linear:
    torch.manual_seed(5)
    return nn.Linear(D, V).double()


def _hsdp_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(20 + rank)
    h = torch.randn(3, D, generator=g, dtype=torch.float64)
    return h, torch.randint(0, V, (3,), generator=g)


def _tp_cols(tp: int, parts: int) -> slice:
    sizes = [len(c) for c in torch.arange(V).tensor_split(parts)]
    return slice(sum(sizes[:tp]), sum(sizes[: tp + 1]))


def _run(group, z, y, h, w, cols) -> dict:
    x = z[:, cols].clone().requires_grad_(True)
    ce = vocab_parallel_cross_entropy(x, y, group=group, label_smoothing=0.1)
    ce.backward()
    lsm = vocab_parallel_log_softmax(z[:, cols], group=group)
    hid = h.clone().requires_grad_(True)
    wl = w[cols].clone().requires_grad_(True)
    lce = vocab_parallel_linear_cross_entropy(hid, wl, y, group=group)
    lce.backward()
    return {"ce": (ce.detach(), x.grad), "lsm": lsm, "lce": (lce.detach(), hid.grad, wl.grad)}


def _checks(rank: int, world: int) -> dict:
    mesh = init_device_mesh("cpu", (DP, TP), mesh_dim_names=("dp", "tp"))
    dp, tp = mesh.get_coordinate()
    z, y, h, w = _data(dp)
    cols = _tp_cols(tp, TP)
    groups = {
        "sub_mesh": mesh["tp"],
        "mesh_name": (mesh, "tp"),
        "mesh_index": (mesh, 1),
        "process_group": mesh.get_group("tp"),
    }
    out: dict = {
        "dp": dp,
        "tp": tp,
        "forms": {k: _run(g, z, y, h, w, cols) for k, g in groups.items()},
    }

    # a 1-D mesh over all ranks: group=mesh is group=None
    line = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    z, y, h, w = _data(0)
    cols = _tp_cols(rank, world)
    out["line"] = {"mesh": _run(line, z, y, h, w, cols), "none": _run(None, z, y, h, w, cols)}
    # a Shard(1) DTensor of the logits: its local shard with group=its mesh
    dt = distribute_tensor(z, line, [Shard(1)])
    x = dt.to_local().clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, y, group=dt.device_mesh)
    loss.backward()
    out["dtensor"] = (loss.detach(), x.grad, x.shape[1])

    # HSDP (fully_shard on the 2-D mesh: replicated over "dp", sharded over "tp"), the fused
    # loss called outside the head's forward: the gradient is averaged over all 4 ranks
    head = _head()
    fully_shard(head, mesh=mesh)
    h, y = _hsdp_data(rank)
    loss = linear_cross_entropy(h, head.weight, y, linear_bias=head.bias)
    loss.backward()
    out["hsdp"] = (
        loss.detach(),
        is_dtensor(head.weight) and tuple(map(str, head.weight.placements)),
        head.weight.grad.full_tensor(),
        head.bias.grad.full_tensor(),
    )

    errors = {}
    for name, group in {
        "2d": mesh,
        "bad_name": (mesh, "pp"),
        "bad_index": (mesh, 2),
        "string": "tp",
    }.items():
        try:
            vocab_parallel_cross_entropy(z[:, cols], y, group=group)
            errors[name] = None
        except (TypeError, ValueError) as e:
            errors[name] = (type(e).__name__, str(e))
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return spawn(_checks, WORLD, str(tmp_path_factory.mktemp("mesh")))


def _reference(dp: int) -> dict:
    z, y, h, w = _data(dp)
    x = z.clone().requires_grad_(True)
    ce = F.cross_entropy(x, y, label_smoothing=0.1)
    ce.backward()
    hid, wf = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lce = F.cross_entropy(hid @ wf.T, y)
    lce.backward()
    return {
        "ce": (ce.detach(), x.grad),
        "lsm": torch.log_softmax(z, 1),
        "lce": (lce.detach(), hid.grad, wf.grad),
    }


def _assert_run(res: dict, ref: dict, cols: slice) -> None:
    torch.testing.assert_close(res["ce"][0], ref["ce"][0], **TOL)
    torch.testing.assert_close(res["ce"][1], ref["ce"][1][:, cols], **TOL)
    torch.testing.assert_close(res["lsm"], ref["lsm"][:, cols], **TOL)
    torch.testing.assert_close(res["lce"][0], ref["lce"][0], **TOL)
    torch.testing.assert_close(res["lce"][1], ref["lce"][1], **TOL)
    torch.testing.assert_close(res["lce"][2], ref["lce"][2][cols], **TOL)


@pytest.mark.parametrize("form", FORMS)
def test_mesh_dimension_forms_match_process_group_and_one_process(ranks, form):
    for res in ranks:
        got, pg = res["forms"][form], res["forms"]["process_group"]
        for key in ("ce", "lsm", "lce"):
            a = got[key] if isinstance(got[key], tuple) else (got[key],)
            b = pg[key] if isinstance(pg[key], tuple) else (pg[key],)
            for u, w in zip(a, b, strict=True):
                assert torch.equal(u, w), (form, key)
        _assert_run(got, _reference(res["dp"]), _tp_cols(res["tp"], TP))


def test_one_dimensional_mesh_is_the_default_group(ranks):
    ref = _reference(0)
    for rank, res in enumerate(ranks):
        cols = _tp_cols(rank, WORLD)
        _assert_run(res["line"]["mesh"], ref, cols)
        _assert_run(res["line"]["none"], ref, cols)


def test_dtensor_shard_with_its_mesh(ranks):
    z, y, *_ = _data(0)
    x = z.clone().requires_grad_(True)
    loss = F.cross_entropy(x, y)
    loss.backward()
    widths = [res["dtensor"][2] for res in ranks]
    assert widths == [3, 3, 3, 1]  # torch.chunk's split: contiguous, in rank order
    start = 0
    for res, width in zip(ranks, widths, strict=True):
        torch.testing.assert_close(res["dtensor"][0], loss.detach(), **TOL)
        torch.testing.assert_close(res["dtensor"][1], x.grad[:, start : start + width], **TOL)
        start += width


def test_hsdp_weight_outside_forward_matches_one_process(ranks):
    head = _head()
    hs, ys = zip(*(_hsdp_data(r) for r in range(WORLD)), strict=True)
    loss = F.cross_entropy(head(torch.cat(hs)), torch.cat(ys))
    loss.backward()
    torch.testing.assert_close(torch.stack([r["hsdp"][0] for r in ranks]).mean(), loss, **TOL)
    for res in ranks:
        assert res["hsdp"][1] == ("R", "S(0)")  # Replicate over "dp", Shard(0) over "tp"
        torch.testing.assert_close(res["hsdp"][2], head.weight.grad, **TOL)
        torch.testing.assert_close(res["hsdp"][3], head.bias.grad, **TOL)


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("2d", "ValueError", r'1-D DeviceMesh.*mesh\["tp"\].*\(mesh, "tp"\)'),
        ("bad_name", "ValueError", r"names no dimension of the mesh.*\('dp', 'tp'\)"),
        ("bad_index", "ValueError", r"index in \[0, 1\], got 2"),
        ("string", "TypeError", "a 1-D DeviceMesh or a \\(DeviceMesh, dim\\) pair, got str"),
    ],
)
def test_bad_groups_raise_on_every_rank(ranks, name, error, match):
    import re

    for res in ranks:
        got = res["errors"][name]
        assert got is not None and got[0] == error, got
        assert re.search(match, got[1]), got[1]
