"""softmaxkit.integrations.transformers: the patched Hugging Face causal LMs give the loss
and every parameter gradient of the unpatched model, without building the logits.

Every model is a tiny randomly initialised one built from its config (seeded, no
download). The reference is the same model instance before ``apply`` (transformers' own
``ForCausalLMLoss``), and for the z-loss a float64 transcription of the loss from the
unpatched logits (:func:`causal_lm_loss_ref`).
"""

from __future__ import annotations

import inspect
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from softmaxkit.integrations.transformers import SUPPORTED, apply, remove  # noqa: E402

V, H, T, B = 256, 32, 11, 3
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _small(config_cls, **extra):
    common = {
        "vocab_size": V,
        "hidden_size": H,
        "intermediate_size": 2 * H,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    return config_cls(**{**common, **extra})


CONFIGS = {
    "LlamaForCausalLM": lambda: _small(transformers.LlamaConfig),
    "MistralForCausalLM": lambda: _small(transformers.MistralConfig),
    "Qwen2ForCausalLM": lambda: _small(transformers.Qwen2Config),
    "Qwen3ForCausalLM": lambda: _small(transformers.Qwen3Config, head_dim=8),
    "GemmaForCausalLM": lambda: _small(transformers.GemmaConfig, head_dim=8),
    # a small cap (the model's default is 30) so that capping changes the loss visibly
    "Gemma2ForCausalLM": lambda: _small(
        transformers.Gemma2Config, head_dim=8, final_logit_softcapping=0.5
    ),
    "GPT2LMHeadModel": lambda: transformers.GPT2Config(
        vocab_size=V,
        n_embd=H,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    ),  # fmt: skip
}


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(transformers, family)(CONFIGS[family]())
    model.train()
    return model


def batch(seed: int = 1, vocab: int = V, b: int = B, t: int = T):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[1, torch.rand(t, generator=g) < 0.3] = -100
    return ids, labels


def step(model, ids, labels, **kwargs):
    """Loss and every parameter gradient of one forward/backward (gradients zeroed first)."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same_step(plain, fused):
    (out0, g0), (out1, g1) = plain, fused
    torch.testing.assert_close(out1.loss, out0.loss, **TOL)
    assert g1.keys() == g0.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def causal_lm_loss_ref(logits, labels, z_loss=0.0, num_items=None, ignore_index=-100):
    """float64 transcription: position t predicts labels[t + 1]; kept tokens' cross-entropy
    plus z_loss * lse^2, averaged over the kept tokens or summed and divided by num_items."""
    z = logits.detach().double()[:, :-1].reshape(-1, logits.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = y != ignore_index
    lse = torch.logsumexp(z[keep], -1)
    per_token = lse - z[keep].gather(1, y[keep, None]).squeeze(1) + z_loss * lse**2
    return per_token.sum() / (keep.sum() if num_items is None else num_items)


# ------------------------------------------------------------------ loss and gradients


@pytest.mark.parametrize("family", list(SUPPORTED))
def test_loss_and_every_gradient_equal_the_unpatched_model(family):
    model = build(family)
    ids, labels = batch()
    plain = step(model, ids, labels)
    fused = step(apply(model), ids, labels)
    assert fused[0].logits is None
    assert_same_step(plain, fused)


@pytest.mark.parametrize("family", ["LlamaForCausalLM", "GPT2LMHeadModel"])
@pytest.mark.parametrize("as_tensor", [True, False])
def test_num_items_in_batch_divides_the_sum(family, as_tensor):
    model = build(family)
    ids, labels = batch(seed=2)
    items = torch.tensor(41) if as_tensor else 41
    plain = step(model, ids, labels, num_items_in_batch=items)
    fused = step(apply(model), ids, labels, num_items_in_batch=items)
    assert_same_step(plain, fused)
    ref = causal_lm_loss_ref(model(input_ids=ids).logits, labels, num_items=41)
    torch.testing.assert_close(fused[0].loss.double(), ref, **TOL)


def test_gradient_accumulation_equals_the_whole_batch():
    """Two micro-batches with the whole batch's token count: the accumulated gradient is
    the whole batch's mean-loss gradient (what num_items_in_batch is for)."""
    model = apply(build("LlamaForCausalLM"))
    ids, labels = batch(seed=3, b=4)
    whole = step(model, ids, labels)[1]
    items = (labels[:, 1:] != -100).sum()
    model.zero_grad(set_to_none=True)
    for half in (slice(0, 2), slice(2, 4)):
        model(input_ids=ids[half], labels=labels[half], num_items_in_batch=items).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, whole[name], **TOL)


def test_gemma2_softcap_is_the_models_and_can_be_overridden():
    model = build("Gemma2ForCausalLM")
    ids, labels = batch(seed=4)
    plain = step(model, ids, labels)
    logits = model(input_ids=ids).logits
    assert logits.abs().max() <= 0.5  # the cap is on
    assert_same_step(plain, step(apply(model), ids, labels))
    remove(model)
    uncapped = model.model(input_ids=ids).last_hidden_state @ model.lm_head.weight.T
    no_cap = apply(model, softcap=None)(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(no_cap.double(), causal_lm_loss_ref(uncapped, labels), **TOL)
    assert not torch.allclose(no_cap, plain[0].loss)
    remove(model)
    capped = 0.25 * torch.tanh(uncapped / 0.25)
    other = apply(model, softcap=0.25)(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(other.double(), causal_lm_loss_ref(capped, labels), **TOL)


def test_z_loss_is_the_log_sum_exp_penalty():
    model = build("Qwen2ForCausalLM")
    ids, labels = batch(seed=5)
    logits = model(input_ids=ids).logits
    loss = apply(model, z_loss=1e-2)(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(loss.double(), causal_lm_loss_ref(logits, labels, 1e-2), **TOL)


def test_chunk_size_does_not_change_the_step():
    model = build("LlamaForCausalLM")
    ids, labels = batch(seed=6)
    plain = step(model, ids, labels)
    assert_same_step(plain, step(apply(model, chunk_size=5), ids, labels))


def test_eval_mode_and_no_grad():
    model = build("GPT2LMHeadModel").eval()
    ids, labels = batch(seed=7)
    with torch.no_grad():
        plain = model(input_ids=ids, labels=labels).loss
        fused = apply(model)(input_ids=ids, labels=labels)
    assert fused.logits is None and not fused.loss.requires_grad
    torch.testing.assert_close(fused.loss, plain, **TOL)
    remove(model)
    apply(model, eval_logits=True)
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    assert out.logits is not None and torch.equal(out.loss, plain)
    model.train()
    assert model(input_ids=ids, labels=labels).logits is None


def test_bfloat16_model_gives_a_float32_loss_close_to_the_unpatched_one():
    model = build("LlamaForCausalLM").to(torch.bfloat16)
    ids, labels = batch(seed=8)
    plain = step(model, ids, labels)
    fused = step(apply(model), ids, labels)
    assert plain[0].loss.dtype == fused[0].loss.dtype == torch.float32
    torch.testing.assert_close(fused[0].loss, plain[0].loss, rtol=2e-2, atol=2e-2)
    for name, g in fused[1].items():
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all(), name


# --------------------------------------------------------- the call without labels, the rest


@pytest.mark.parametrize("family", ["Gemma2ForCausalLM", "GPT2LMHeadModel"])
def test_without_labels_the_model_is_unchanged(family):
    model = build(family)
    ids, _ = batch(seed=9)
    before = model(input_ids=ids).logits
    prompt = {"input_ids": ids[:1, :4], "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    apply(model)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    after = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert torch.equal(after, generated)


def test_output_fields_return_dict_false_and_labels_by_position():
    model = build("LlamaForCausalLM")
    ids, labels = batch(seed=10)
    plain = model(input_ids=ids, labels=labels, output_hidden_states=True)
    apply(model)
    out = model(input_ids=ids, labels=labels, output_hidden_states=True)
    assert out.logits is None and "logits" not in out
    for a, b in zip(out.hidden_states, plain.hidden_states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    as_tuple = model(input_ids=ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], plain.loss, **TOL)
    by_position = model(ids, None, None, None, None, labels)  # (input_ids, ..., labels)
    assert by_position.logits is None
    torch.testing.assert_close(by_position.loss, plain.loss, **TOL)


def test_remove_restores_and_apply_is_idempotent():
    model = build("Qwen3ForCausalLM")
    ids, labels = batch(seed=11)
    signature = inspect.signature(model.forward)
    assert apply(model) is model
    patched_forward = model.forward
    assert inspect.signature(model.forward) == signature  # the Trainer reads its parameters
    assert apply(model) is model and model.forward is patched_forward  # same options: no-op
    with pytest.raises(ValueError, match="remove"):
        apply(model, z_loss=1e-4)
    assert remove(model) is model
    assert "forward" not in model.__dict__ and model.forward.__func__ is type(model).forward
    out = model(input_ids=ids, labels=labels)
    assert out.logits is not None and out.logits.shape == (B, T, V)
    assert remove(model) is model  # not patched: unchanged
    apply(model, z_loss=1e-4)  # other options after remove
    assert model(input_ids=ids, labels=labels).logits is None


def test_remove_refuses_to_undo_a_later_patch():
    model = apply(build("LlamaForCausalLM"))
    theirs = model.forward
    model.forward = lambda *a, **k: theirs(*a, **k)
    with pytest.raises(RuntimeError, match="replaced"):
        remove(model)


def test_trainer_step_with_gradient_accumulation_equals_the_unpatched_one(tmp_path):
    """The Trainer passes num_items_in_batch to the patched forward (its signature is the
    model's) and keeps the dataset columns: one SGD step over two accumulated micro-batches
    with uneven masking gives the unpatched model's parameters."""
    pytest.importorskip("accelerate")
    ids, labels = batch(seed=13, b=4)
    labels[2:, 1:6] = -100  # the second micro-batch keeps fewer tokens
    rows = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]

    def train(patched):
        model = build("LlamaForCausalLM")
        if patched:
            apply(model)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(patched)), per_device_train_batch_size=2,
            gradient_accumulation_steps=2, max_steps=1, learning_rate=0.1, optim="sgd",
            lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
            logging_strategy="no", dataloader_num_workers=0,
        )  # fmt: skip
        transformers.Trainer(model=model, args=args, train_dataset=rows).train()
        return dict(model.named_parameters())

    plain, fused = train(False), train(True)
    for name, p in plain.items():
        torch.testing.assert_close(fused[name], p, **TOL)
    assert any(
        not torch.equal(p, build("LlamaForCausalLM").state_dict()[n]) for n, p in plain.items()
    )


# ------------------------------------------------------------------------------- errors


def test_unsupported_models_raise_a_type_error_naming_the_families():
    with pytest.raises(TypeError, match="LlamaForCausalLM.*GPT2LMHeadModel"):
        apply(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        apply("gpt2")

    class Custom(transformers.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    torch.manual_seed(0)
    with pytest.raises(TypeError, match="overrides the forward"):
        apply(Custom(CONFIGS["LlamaForCausalLM"]()))


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"loss": "cross_entropy"}, ValueError, "loss"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"z_loss": "big"}, TypeError, "z_loss"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": "gemma"}, ValueError, "softcap"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size"),
        ({"eval_logits": 1}, TypeError, "eval_logits"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, name):
    model = build("LlamaForCausalLM")
    with pytest.raises(error, match=name):
        apply(model, **kwargs)
    assert "forward" not in model.__dict__


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'softmaxkit\[hf\]'"):
        apply(torch.nn.Linear(2, 2))


def test_too_old_transformers_names_the_minimum(monkeypatch):
    model = build("LlamaForCausalLM")
    # the module object in sys.modules, which transformers' lazy loading may have replaced
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.45.2")
    with pytest.raises(ImportError, match=r"transformers>=4\.51, found 4\.45\.2"):
        apply(model)


# ------------------------------------------------------------------------------- memory


def test_peak_memory_of_a_training_step_is_lower_at_a_32k_vocabulary():
    """One training step of a tiny Llama (vocabulary 32768, hidden 64, 1 layer, 2 x 256
    tokens): the peak resident memory above the inputs (softmaxkit.cli.bench_memory's
    measurement: VmHWM reset through /proc/self/clear_refs) is lower patched."""
    bench_memory = pytest.importorskip("softmaxkit.cli.bench_memory")
    vocab = 32768
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids, labels = batch(seed=12, vocab=vocab, b=2, t=256)

    def train_step(patched):
        (apply if patched else remove)(model)
        return model(input_ids=ids, labels=labels).loss

    for patched in (False, True):  # warm up: the first backward pages in library code
        train_step(patched).backward()
    peaks = {}
    for patched in (False, True):
        model.zero_grad(set_to_none=True)
        report = bench_memory.measure_peak(train_step, (patched,), "fwdbwd", None)
        if report["peak_above_inputs_bytes"] is None:
            pytest.skip(report["note"])
        peaks[patched] = report["peak_above_inputs_bytes"]
    # measured: 195 MiB unpatched, 44 MiB patched (ratio 0.22); the logits alone are 64 MiB
    logits_bytes = 2 * 256 * vocab * 4
    assert peaks[False] > logits_bytes, peaks  # the unpatched step holds the logits
    assert peaks[True] < 0.5 * peaks[False], peaks
