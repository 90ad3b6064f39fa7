"""Key-space diagnostics on a small word-level language model trained on built-in text.

Peng, An & Shang, "Correlation and Navigation in the Vocabulary Key Representation Space of
Language Models", ICLR 2025, arXiv:2410.02284: the next-token distribution is a softmax of
dot products between a query (the last hidden state) and fixed vocabulary keys (the output
weight's rows); its middle ranks are pulled toward the keys similar to the top-ranked ones.

The text is CPython's own documentation shipped with every Python (``pydoc_data.topics``,
about 80k words; no download). A 4-word-context MLP language model (embeddings 48, hidden
256, query 48, untied output keys, vocabulary of the 2000 most frequent words + ``<unk>``)
trains for a few thousand steps (about a minute on 2 CPU cores), then
:func:`softmaxkit.dynamics.key_space_report` runs on the queries of held-out contexts:

* **trained**: the trained keys and queries;
* **random keys** (control): the same queries against Gaussian keys with the trained keys'
  norms (the logit geometry alone, without a learned key space);
* **untrained**: the model at initialisation (its own keys and queries).

A vocabulary permutation is no control here: the report is invariant to it (it permutes
probabilities and similarities together). One held-out context is shown in full: its top-1
word, the nearest keys of that word, and the words ranked 11-25 with ``*`` on those among
the neighbours.

Run: ``PYTHONPATH=src python examples/key_space_demo.py`` (``--quick`` for a miniature;
one torch thread by default, ``--threads N`` to change it).
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit.dynamics import key_space_report

CONTEXT = 4


def corpus() -> list[str]:
    """The words and punctuation of CPython's documentation topics, lower-cased."""
    from pydoc_data.topics import topics

    text = " ".join(topics[name] for name in sorted(topics))
    return re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", text.lower())


def vocabulary(words: list[str], size: int) -> tuple[list[str], torch.Tensor]:
    """The ``size`` most frequent words + ``<unk>`` (index ``size``), and the token ids."""
    counts = collections.Counter(words)
    itos = [w for w, _ in counts.most_common(size)]
    stoi = {w: i for i, w in enumerate(itos)}
    ids = torch.tensor([stoi.get(w, size) for w in words])
    return [*itos, "<unk>"], ids


class WordLM(nn.Module):
    """Concatenated context embeddings -> MLP -> query -> untied output keys."""

    def __init__(self, vocab: int, embed: int = 48, hidden: int = 256, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, embed)
        self.body = nn.Sequential(
            nn.Linear(CONTEXT * embed, hidden), nn.GELU(), nn.Linear(hidden, embed)
        )
        self.head = nn.Linear(embed, vocab, bias=False)

    def query(self, context: torch.Tensor) -> torch.Tensor:
        return self.body(self.embed(context).flatten(1))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(self.query(context))


def windows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(contexts (N, CONTEXT), next tokens (N,))."""
    ctx = ids.unfold(0, CONTEXT + 1, 1)
    return ctx[:, :CONTEXT], ctx[:, CONTEXT]


def train(model: WordLM, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    loss = torch.tensor(0.0)
    for step in range(steps):
        batch = torch.randint(len(y), (256,), generator=g)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // 5) == 0:
            print(f"  step {step:5d}  train loss {loss.item():.3f}", flush=True)
    return float(loss.detach())


def row(name: str, report) -> dict[str, float | str]:
    s, m = report.spearman_summary, report.share_summary
    return {
        "keys": name,
        "spearman_mean": float(s.mean),
        "spearman_median": float(s.quantiles[2]),
        "share_mean": float(m.mean),
        "share_median": float(m.quantiles[2]),
        "chance": report.chance_share,
        "lift": float(m.mean) / report.chance_share,
    }


def random_keys_like(keys: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = F.normalize(torch.randn(keys.shape, generator=g), dim=1)
    return noise * keys.norm(dim=1, keepdim=True)


def show_example(itos, keys, queries, index: int, neighbours: int) -> None:
    z = queries[index] @ keys.T
    order = z.argsort(descending=True)
    top = int(order[0])
    cos = F.normalize(keys, dim=1) @ F.normalize(keys[top], dim=0)
    cos[top] = -2.0
    near = cos.topk(neighbours).indices.tolist()
    print(f"\n  example: top-1 word {itos[top]!r}; its nearest keys: ", end="")
    print(", ".join(repr(itos[i]) for i in near[:10]))
    middle = [f"{itos[i]}{'*' if i in near else ''}" for i in order[10:25].tolist()]
    print("  ranks 11-25 (* = among its", neighbours, "nearest keys):", " ".join(middle))


def run(
    *, vocab: int = 2000, steps: int = 3000, queries: int = 2000, neighbours: int = 20
) -> dict[str, object]:
    """Train, report and return the table's rows (and the timing)."""
    start = time.perf_counter()
    words = corpus()
    itos, ids = vocabulary(words, vocab)
    cut = int(0.9 * len(ids))
    x, y = windows(ids[:cut])
    xt, _ = windows(ids[cut:])
    xt = xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(1))[:queries]]
    model = WordLM(len(itos))
    with torch.no_grad():
        init_keys, init_queries = model.head.weight.clone(), model.query(xt)
    print(f"corpus: {len(words)} words, vocabulary {len(itos)}, {len(y)} training windows")
    loss = train(model, x, y, steps)
    with torch.no_grad():
        keys, q = model.head.weight.detach(), model.query(xt)
    kw = {"neighbours": neighbours}
    rows = [
        row("trained", key_space_report(keys, q, **kw)),
        row("random keys (control)", key_space_report(random_keys_like(keys, 2), q, **kw)),
        row("untrained", key_space_report(init_keys, init_queries, **kw)),
    ]
    print(
        f"\nkey-space report over {len(xt)} held-out contexts (top = 10, window = ranks "
        f"11-100, neighbours k = {neighbours}, mass of ranks 2-100)"
    )
    names = ("rho mean", "rho med", "share", "chance", "lift")
    print(f"  {'keys':24s} " + " ".join(f"{n:>{w}s}" for n, w in zip(names, (9, 8, 7, 7, 6))))
    for r in rows:
        print(
            f"  {r['keys']:24s} {r['spearman_mean']:9.3f} {r['spearman_median']:8.3f} "
            f"{r['share_mean']:7.3f} {r['chance']:7.4f} {r['lift']:6.1f}"
        )
    show_example(itos, keys, q, 0, neighbours)
    seconds = time.perf_counter() - start
    print(f"\ntotal {seconds:.0f} s")
    return {"rows": rows, "train_loss": loss, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a miniature (seconds)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the model is tiny)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        run(vocab=300, steps=300, queries=200)
    else:
        run()


if __name__ == "__main__":
    main()
