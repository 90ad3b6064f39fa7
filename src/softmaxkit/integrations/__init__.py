"""Optional integrations of softmaxkit into other libraries.

Each integration is a module of this package that imports its library lazily (only when
one of its functions is called), so ``import softmaxkit.integrations`` never needs the
library and never imports anything heavy:

* :mod:`softmaxkit.integrations.transformers`: :func:`~softmaxkit.integrations.transformers.apply`
  patches a Hugging Face causal LM instance (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2,
  GPT-2) so that its training loss is the fused
  :func:`softmaxkit.heads.linear_cross_entropy` and the logits are not built;
  :func:`~softmaxkit.integrations.transformers.remove` undoes it. Needs
  ``pip install 'softmaxkit[hf]'``.
"""

__all__: list[str] = []
