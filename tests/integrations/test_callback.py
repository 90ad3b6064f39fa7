"""CollapseCallback in a real Hugging Face Trainer run on a tiny random GPT-2 (no downloads)."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from softmaxkit.dynamics import softmax_collapse  # noqa: E402
from softmaxkit.integrations._trainer_callback import CollapseCallback  # noqa: E402

VOCAB, SEQ = 128, 12


def _model(sharpen: float = 1.0):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=32,
        vocab_size=VOCAB,
        n_positions=SEQ,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # a sharper head: part of the tokens collapse in float32
        model.lm_head.weight.mul_(sharpen)
    return model


def _data(n: int = 4):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(VOCAB, (n, SEQ), generator=g)
    return [{"input_ids": row, "labels": row.clone()} for row in ids], ids


def _trainer(model, data, tmp_path, callback, eval_dataset=None, **overrides):
    kwargs = {
        "output_dir": str(tmp_path),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "learning_rate": 0.0,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "seed": 0,
        **overrides,
    }
    args = transformers.TrainingArguments(**kwargs)
    return transformers.Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=eval_dataset, callbacks=[callback]
    )


def test_logged_values_appear_in_the_log_history_and_equal_the_direct_metrics(tmp_path):
    model = _model(sharpen=60.0)
    data, ids = _data()
    callback = CollapseCallback()
    trainer = _trainer(model, data, tmp_path, callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    # learning rate 0 and one batch of the same 4 sequences per step: every step measures
    # the same logits, which the model gives here
    model.train()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    direct = softmax_collapse(logits[:, :-1], ids[:, 1:])
    assert 0 < direct.fraction.item() < 1 and 0 < direct.zero_loss_fraction.item() < 1
    for entry in logged:
        assert entry["collapse_fraction"] == pytest.approx(direct.fraction.item(), abs=1e-6)
        assert entry["zero_loss_fraction"] == pytest.approx(
            direct.zero_loss_fraction.item(), abs=1e-6
        )
    # the hooks are gone after training
    assert not model.lm_head._forward_hooks and not model._forward_pre_hooks


def test_evaluation_passes_are_not_counted(tmp_path):
    model = _model(sharpen=60.0)
    data, _ = _data()
    callback = CollapseCallback(every=2)
    trainer = _trainer(
        model, data, tmp_path, callback, data, eval_strategy="steps", eval_steps=1, max_steps=4
    )
    trainer.train()
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    eval_logs = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert eval_logs and all("collapse_fraction" not in e for e in eval_logs)
    # every=2: steps 1 and 3 are measured, steps 2 and 4 log nothing of their own
    assert ["collapse_fraction" in e for e in train_logs] == [True, False, True, False]


def _fuse(model):
    """A stand-in for a fused-loss patch: the head returns a (..., 0) placeholder and the
    loss is computed from the hidden states and the head weight directly."""
    head = model.lm_head
    head.forward = lambda h: h.new_empty((*h.shape[:-1], 0))

    def forward(input_ids=None, labels=None, **kwargs):
        hidden = model.transformer(input_ids=input_ids).last_hidden_state
        model.lm_head(hidden)
        z = hidden[:, :-1] @ head.weight.T
        loss = torch.nn.functional.cross_entropy(z.reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return transformers.modeling_outputs.CausalLMOutputWithCrossAttentions(loss=loss)

    model.forward = forward
    return model


def test_a_fused_loss_warns_once_and_logs_no_zeros(tmp_path):
    model = _fuse(_model())
    data, _ = _data()
    callback = CollapseCallback()
    trainer = _trainer(model, data, tmp_path, callback)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ours = [w for w in caught if "CollapseCallback" in str(w.message)]
    assert len(ours) == 1 and "fused" in str(ours[0].message)
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all("collapse_fraction" not in e for e in logged)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="every"):
        CollapseCallback(every=0)
    with pytest.raises(TypeError, match="dtype"):
        CollapseCallback(dtype="float32")
