"""Benchmark case for ``softmaxkit.integrations.transformers`` (``softmaxkit bench -k hf``).

One training step (forward with labels + backward to every parameter) of a tiny randomly
initialised Llama (``LlamaForCausalLM``: vocabulary 32768, hidden 256, intermediate 512,
2 layers, 4 heads; batch 4 x 512 tokens, float32), patched with
:func:`softmaxkit.integrations.transformers.apply` against the same model unpatched
(transformers' own ``lm_head`` + ``ForCausalLMLoss``, which builds the 2048 x 32768
logits: 256 MiB, their float32 log-softmax and gradient). Both run on the same model
instance (``ours`` applies the patch, ``baseline`` removes it; both are no-ops after the
first call); every parameter is an argument so that the harness clears the gradients
between runs. Targets: peak memory lower (ratio < 1), time at most 1.1x. ``--quick``:
batch 1 x 128 tokens. Needs transformers (``pip install 'softmaxkit[hf]'``); skipped
without it.
"""

from __future__ import annotations

from typing import Any

import torch

from softmaxkit.cli.bench import Case

VOCAB, HIDDEN, LAYERS, BATCH, SEQ = 32768, 256, 2, 4, 512
QUICK = (1, 128)


def _setup(quick: bool) -> tuple[Any, ...]:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).train()
    batch, seq = QUICK if quick else (BATCH, SEQ)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 8] = -100  # a masked prompt
    return (model, ids, labels, *model.parameters())


def patched_step(model: Any, ids: torch.Tensor, labels: torch.Tensor, *params: Any) -> Any:
    from softmaxkit.integrations.transformers import apply

    return apply(model)(input_ids=ids, labels=labels).loss


def unpatched_step(model: Any, ids: torch.Tensor, labels: torch.Tensor, *params: Any) -> Any:
    from softmaxkit.integrations.transformers import remove

    return remove(model)(input_ids=ids, labels=labels).loss


CASES = [
    Case(
        name=f"hf.apply/llama,V={VOCAB},d={HIDDEN},L={LAYERS},{BATCH}x{SEQ}",
        setup=_setup,
        ours=patched_step,
        baseline=unpatched_step,
        baseline_name="LlamaForCausalLM (lm_head + ForCausalLMLoss)",
        targets={"mem_fwdbwd": 1.0, "time_fwdbwd": 1.1},
        atol=1e-4,
        requires=("transformers",),
    ),
]
