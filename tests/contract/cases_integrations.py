"""Contract cases of ``softmaxkit.integrations.transformers`` (``apply`` and ``remove``).

Both take a model, so each is registered through a small ``op`` that builds a tiny seeded
Hugging Face causal LM (float64 weights cast to the sample's dtype, so every dtype sees
the same model), patches it and returns the loss of ``model(inputs_embeds=..., labels=...)``;
the differentiable input is ``inputs_embeds``. The float64 oracle is the unpatched model
itself (transformers' own ``ForCausalLMLoss``), and for a z-loss or a soft cap other than
the model's, a float64 transcription of the causal-LM loss from the unpatched model's
logits. Without transformers every test skips, saying so.
"""

from __future__ import annotations

import importlib.util

import torch

from tests.contract.inputs import labels, randn
from tests.contract.registry import Bad, Case, Sample, register

HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
ALL_TESTS = ("reference", "dtypes", "reductions", "ignore_index", "prob_targets")
ALL_TESTS += ("noncontiguous", "dim", "empty", "compile", "gradcheck", "bad", "labels")
ALL_TESTS += ("magnitude", "masked_row")
MISSING = "transformers is not installed (pip install 'softmaxkit[hf]')"
NOT_COMPILED = (
    "patches a model instance (Python attribute swaps around each call); the fused loss it "
    "calls, softmaxkit.heads.linear_cross_entropy, is compiled in the heads group"
)
FLOAT32_LOSS = (
    "transformers' own loss (ForCausalLMLoss) upcasts the logits with .float(): it is float32 "
    "even for a float64 model, so the unpatched model is not gradchecked in float64"
)
NO_GRADCHECK = (
    "the fused 'mean'/'sum' loss hands its forward-computed gradients to one backward only "
    "(gradcheck backpropagates several times); linear_cross_entropy is gradchecked with "
    "reduction='none', and tests/integrations compares every parameter gradient of the "
    "patched model with the unpatched model's"
)
H, V = 16, 24


def tiny_model(family: str, dtype: torch.dtype):
    """A seeded one-layer model of ``family`` ("llama", "gemma2", "gpt2") in ``dtype``."""
    import transformers

    small = {"vocab_size": V, "hidden_size": H, "intermediate_size": 32, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    configs = {
        "llama": lambda: transformers.LlamaConfig(**small),
        "gemma2": lambda: transformers.Gemma2Config(
            **small, head_dim=8, final_logit_softcapping=1.0
        ),
        "gpt2": lambda: transformers.GPT2Config(
            vocab_size=V,
            n_embd=H,
            n_layer=1,
            n_head=2,
            n_positions=16,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),  # fmt: skip
    }
    classes = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}
    classes["gpt2"] = "GPT2LMHeadModel"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(transformers, classes[family])(configs[family]())
    return model.to(torch.float64).to(dtype)


def samples(dtype):
    y = labels(2, 5, classes=V)
    y[0, :2] = -100
    return [
        Sample((randn(2, 5, H, dtype=dtype), y), grad=(0,)),
        Sample(
            (randn(1, 6, H, dtype=dtype, seed=4), labels(1, 6, classes=V, seed=5)),
            {"family": "gemma2", "z_loss": 1e-2, "chunk_size": 4},
            grad=(0,),
        ),
        Sample(
            (randn(2, 4, H, dtype=dtype, seed=6), labels(2, 4, classes=V, seed=7)),
            {"family": "gpt2", "softcap": 2.0},
            grad=(0,),
        ),
    ]


def apply_op(inputs_embeds, labels, *, family="llama", **options):
    from softmaxkit.integrations.transformers import apply

    model = apply(tiny_model(family, inputs_embeds.dtype).to(inputs_embeds.device), **options)
    out = model(inputs_embeds=inputs_embeds, labels=labels)
    assert out.logits is None
    return out.loss


def remove_op(inputs_embeds, labels, *, family="llama", **options):
    from softmaxkit.integrations.transformers import apply, remove

    model = tiny_model(family, inputs_embeds.dtype).to(inputs_embeds.device)
    model = remove(apply(model, **options))
    out = model(inputs_embeds=inputs_embeds, labels=labels)
    assert out.logits is not None
    return out.loss


def causal_lm_reference(
    inputs_embeds, labels, *, family="llama", z_loss=0.0, softcap="model", chunk_size=None
):
    """The causal-LM loss transcribed in float64 from the unpatched float64 model's
    (uncapped) logits ``s``: position t predicts labels[t + 1], the kept tokens' mean of
    lse - s_y + z_loss * lse^2, with the model's soft cap or ``softcap``. (transformers'
    own loss is not the oracle here: ForCausalLMLoss computes in float32 even for a
    float64 model.)"""
    model = tiny_model(family, torch.float64)
    x = inputs_embeds.detach().to(torch.float64)
    base = model.get_decoder() if family != "gpt2" else model.transformer
    s = base(inputs_embeds=x).last_hidden_state @ model.get_output_embeddings().weight.T
    cap = getattr(model.config, "final_logit_softcapping", None) if softcap == "model" else softcap
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    s, y = s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1)
    s, y = s[y != -100], y[y != -100]
    lse = torch.logsumexp(s, -1)
    return (lse - s.gather(1, y[:, None]).squeeze(1) + z_loss * lse**2).mean().detach()


def unpatched_baseline(inputs_embeds, labels, *, family="llama", **options):
    """The unpatched model in the same dtype, when the options keep its loss."""
    if options.get("z_loss", 0.0) or options.get("softcap", "model") != "model":
        return None
    model = tiny_model(family, inputs_embeds.dtype).to(inputs_embeds.device)
    return model(inputs_embeds=inputs_embeds, labels=labels).loss


BAD = [
    Bad({"z_loss": -1.0}, ValueError, "z_loss"),
    Bad({"softcap": 0.0}, ValueError, "softcap"),
    Bad({"chunk_size": 0}, ValueError, "chunk_size"),
    Bad({"loss": "cross_entropy"}, ValueError, "loss"),
    Bad({"eval_logits": 1}, TypeError, "eval_logits"),
]
HALF_TOL = {  # a whole transformer layer in half precision before the loss
    torch.float16: {"atol": 5e-3, "rtol": 1e-2},
    torch.bfloat16: {"atol": 3e-2, "rtol": 5e-2},
}


def skips(**reasons: str) -> dict[str, str]:
    return {test: MISSING for test in ALL_TESTS} if not HAVE_TRANSFORMERS else reasons


register(
    Case(
        name="softmaxkit.integrations.transformers.apply",
        op=apply_op,
        samples=samples,
        reference=causal_lm_reference,
        baseline=unpatched_baseline,
        keeps_dtype=False,  # a float16/bfloat16 model's loss is float32, as transformers'
        compile=False,
        gradcheck=False,
        bad=BAD,
        tol=HALF_TOL,
        skip=skips(compile=NOT_COMPILED, gradcheck=NO_GRADCHECK),
    ),
    Case(
        name="softmaxkit.integrations.transformers.remove",
        op=remove_op,
        samples=samples,
        reference=lambda x, y, *, family="llama", **options: causal_lm_reference(
            x, y, family=family
        ),
        baseline=lambda x, y, *, family="llama", **options: unpatched_baseline(x, y, family=family),
        keeps_dtype=False,
        compile=False,
        gradcheck=False,
        # the restored model's loss is transformers' float32 loss (see FLOAT32_LOSS)
        tol={**HALF_TOL, torch.float64: {"atol": 1e-6, "rtol": 1e-6}},
        skip=skips(compile=NOT_COMPILED, gradcheck=FLOAT32_LOSS),
    ),
)
