"""CollapseMonitor: equal to the direct metrics, invisible to outputs and gradients, removal,
module rule, every-n, training-only, output types, errors."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit.dynamics import (
    CollapseMonitor,
    CollapseRecord,
    softmax_collapse,
    softmax_collapse_fraction,
)


def _mlp(seed: int = 0, classes: int = 5) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, classes))


def _batch(n: int = 32, seed: int = 1, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(classes, (n,), generator=g)


def _sharpened(net: nn.Sequential, factor: float) -> nn.Sequential:
    """Scale the head so that part of the rows collapse in float32."""
    with torch.no_grad():
        net[2].weight.mul_(factor)
    return net


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_records_equal_the_direct_metrics(dtype):
    net = _sharpened(_mlp(), 120.0).to(dtype)
    x, y = _batch()
    x = x.to(dtype)
    with CollapseMonitor(net) as monitor:
        monitor.set_target(y)
        logits = net(x)
        net(x)  # a second call without a target
    first, second = monitor.history
    direct = softmax_collapse(logits, y)
    assert first.call == 0 and second.call == 1
    assert torch.equal(first.fraction, direct.fraction)
    assert torch.equal(first.zero_loss_fraction, direct.zero_loss_fraction)
    assert torch.equal(second.fraction, softmax_collapse_fraction(logits))
    assert second.zero_loss_fraction is None
    if dtype == torch.float32:
        assert 0 < first.fraction.item() < 1  # the sample exercises both outcomes


def test_precision_and_class_axis_are_passed_through():
    net = _sharpened(_mlp(), 120.0)
    x, _ = _batch()
    with (
        CollapseMonitor(net, dtype=torch.float64) as wide,
        CollapseMonitor(net, dtype=torch.bfloat16) as narrow,
    ):
        logits = net(x)
    assert torch.equal(wide.latest.fraction, softmax_collapse_fraction(logits, dtype=torch.float64))
    assert torch.equal(
        narrow.latest.fraction, softmax_collapse_fraction(logits, dtype=torch.bfloat16)
    )
    # classes on axis 1 of a (B, C, T) output
    conv = nn.Conv1d(3, 5, 1)
    with CollapseMonitor(conv, dim=1) as monitor:
        out = conv(torch.randn(2, 3, 7) * 50)
    assert torch.equal(monitor.latest.fraction, softmax_collapse_fraction(out, dim=1))


def test_causal_lm_targets_are_shifted():
    head = nn.Linear(8, 11)
    with torch.no_grad():
        head.weight.mul_(30)
    h = torch.randn(3, 6, 8)
    labels = torch.randint(11, (3, 6))
    labels[0, 2] = -100
    with CollapseMonitor(head) as monitor:
        monitor.set_target(labels, shift=True)
        logits = head(h)
    direct = softmax_collapse(logits[:, :-1], labels[:, 1:])
    assert torch.equal(monitor.latest.fraction, direct.fraction)
    assert torch.equal(monitor.latest.zero_loss_fraction, direct.zero_loss_fraction)


def test_outputs_and_gradients_are_unchanged():
    x, y = _batch()
    grads = []
    outs = []
    for monitored in (False, True):
        net = _mlp(seed=3)
        monitor = CollapseMonitor(net) if monitored else None
        if monitor is not None:
            monitor.set_target(y)
        out = net(x)
        F.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
        if monitor is not None:
            assert len(monitor.history) == 1
            assert not monitor.latest.fraction.requires_grad
            monitor.remove()
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_remove_and_context_manager_stop_recording():
    net = _mlp()
    x, _ = _batch()
    monitor = CollapseMonitor(net)
    net(x)
    monitor.remove()
    monitor.remove()  # idempotent
    net(x)
    assert len(monitor.history) == 1 and monitor.calls == 1
    assert not net[2]._forward_hooks
    with CollapseMonitor(net) as inner:
        net(x)
    net(x)
    assert len(inner.history) == 1 and not net[2]._forward_hooks
    assert "removed" in repr(inner)


def test_every_n_th_call_and_max_history():
    net = _mlp()
    x, y = _batch()
    with CollapseMonitor(net, every=3, max_history=2) as monitor:
        for _ in range(8):
            monitor.set_target(y)  # a target set for a skipped call is dropped with it
            net(x)
        assert [r.call for r in monitor.history] == [3, 6]
        assert monitor.calls == 8
        net(x)  # call 8: skipped
        net(x)  # call 9: measured, no target left over
    assert monitor.latest.call == 9 and monitor.latest.zero_loss_fraction is None
    monitor.clear()
    assert monitor.history == [] and monitor.latest is None


def test_training_only_counts_training_mode_calls():
    net = _mlp()
    x, _ = _batch()
    with CollapseMonitor(net, training_only=True) as monitor:
        net.eval()
        net(x)
        net.train()
        net(x)
    assert monitor.calls == 1 and len(monitor.history) == 1


class _Tagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 7)
        self.extra = nn.Linear(4, 2)  # registered last, but not the output head

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_module_rule():
    net = _mlp()
    assert CollapseMonitor(net).module is net[2]  # the last nn.Linear
    assert CollapseMonitor(net[0]).module is net[0]  # a Linear is hooked itself
    assert CollapseMonitor(net, find=False).module is net
    tagged = _Tagged()
    assert CollapseMonitor(tagged).module is tagged.head  # get_output_embeddings wins
    nolinear = nn.Sequential(nn.Conv1d(2, 3, 1), nn.Flatten())
    assert CollapseMonitor(nolinear).module is nolinear
    leaf = nn.Softmax(dim=-1)
    assert CollapseMonitor(leaf).module is leaf


class _Wrapped(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.kind = kind

    def forward(self, x):
        z = self.lin(x)
        if self.kind == "tuple":
            return (z, x)
        if self.kind == "object":
            return types.SimpleNamespace(logits=z, loss=None)
        return {"z": z}


@pytest.mark.parametrize("kind", ["tuple", "object"])
def test_logits_are_found_in_tuples_and_model_outputs(kind):
    model = _Wrapped(kind)
    x = torch.randn(5, 4)
    with CollapseMonitor(model, find=False) as monitor:
        model(x)
    assert torch.equal(monitor.latest.fraction, softmax_collapse_fraction(model.lin(x)))


def test_an_output_without_logits_warns_once_and_records_nothing():
    model = _Wrapped("dict")
    with CollapseMonitor(model, find=False) as monitor:
        with pytest.warns(UserWarning, match="not a floating logits tensor"):
            model(torch.randn(2, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(torch.randn(2, 4))
    assert monitor.history == []


def test_collapse_rises_as_the_head_sharpens():
    net = _mlp()
    x, y = _batch(256)
    fractions = []
    with CollapseMonitor(net) as monitor:
        for factor in (1.0, 30.0, 30.0):
            _sharpened(net, factor)
            monitor.set_target(y)
            net(x)
            fractions.append(monitor.latest.fraction.item())
    assert fractions[0] == 0.0 and fractions[1] < fractions[2] and fractions[2] > 0.5
    assert isinstance(monitor.latest, CollapseRecord)


@pytest.mark.parametrize(
    ("make", "error", "name"),
    [
        (lambda: CollapseMonitor("net"), TypeError, "model_or_module"),
        (lambda: CollapseMonitor(_mlp(), every=0), ValueError, "every"),
        (lambda: CollapseMonitor(_mlp(), every=1.0), TypeError, "every"),
        (lambda: CollapseMonitor(_mlp(), dtype=torch.int32), ValueError, "dtype"),
        (lambda: CollapseMonitor(_mlp(), dim="last"), TypeError, "dim"),
        (lambda: CollapseMonitor(_mlp(), find=1), TypeError, "find"),
        (lambda: CollapseMonitor(_mlp(), training_only=None), TypeError, "training_only"),
        (lambda: CollapseMonitor(_mlp(), max_history=0), ValueError, "max_history"),
        (lambda: CollapseMonitor(_mlp()).set_target([1, 2]), TypeError, "target"),
        (lambda: CollapseMonitor(_mlp()).set_target(None, shift=1), TypeError, "shift"),
    ],
)
def test_errors_name_the_argument(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_shift_needs_the_classes_last():
    conv = nn.Conv1d(3, 5, 1)
    with CollapseMonitor(conv, dim=1) as monitor:
        monitor.set_target(torch.zeros(2, 7, dtype=torch.long), shift=True)
        with pytest.raises(ValueError, match="shift=True"):
            conv(torch.randn(2, 3, 7))


def test_an_empty_class_axis_is_a_placeholder_not_zeros():
    """A fused-loss patch returns a (..., 0) placeholder instead of the logits."""
    head = nn.Linear(4, 6)
    head.forward = lambda h: h.new_empty((*h.shape[:-1], 0))
    with CollapseMonitor(head) as monitor:
        monitor.set_target(torch.zeros(3, dtype=torch.long))
        head(torch.randn(3, 4))
    assert monitor.history == [] and monitor.placeholder_calls == 1 and monitor.calls == 1


def test_a_target_set_before_an_uncounted_eval_call_is_dropped():
    net = _mlp()
    x, y = _batch()
    with CollapseMonitor(net, training_only=True) as monitor:
        net.eval()
        monitor.set_target(y)
        net(x)
        net.train()
        net(x[:5])  # no target: the eval call's target must not be used (shape 32 != 5)
    assert monitor.latest.zero_loss_fraction is None
