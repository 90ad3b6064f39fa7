"""Quantizable Transformers claim (issue 12, claim (b)): with the clipped softmax or gated
attention, a transformer learns much smaller activation outliers than with the vanilla
softmax, and loses less accuracy under 8-bit fake quantization of weights and activations.

Bondarenko, Nagel, Blankevoort, "Quantizable Transformers: Removing Outliers by Helping
Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929. Official code:
Qualcomm-AI-research/outlier-free-transformers.

**Model.** A post-LN encoder (the paper's BERT setting): ``x = LN(x + MHA(x))``,
``x = LN(x + FFN(x))``, FFN ``Linear(d, 4d) -> GELU -> Linear(4d, d)``, learned token and
position embeddings followed by a LayerNorm (BERT's), a per-token linear classifier. The
attention is :class:`softmaxkit.attention.MultiheadAttention`. Three variants, same seed,
data and budget:

* ``vanilla``: the softmax;
* ``clipped``: the clipped softmax with :math:`\\zeta = 1` and :math:`\\gamma = -\\alpha/T`
  (the official ``--alpha`` rule, T the sequence length), with :math:`\\alpha = 3.2`, the
  value that gives the BERT script's ``clipped(-.025:1)`` at its T = 128;
* ``gated``: gated attention ``conditional_per_token`` with the official defaults (linear
  gate on the head's slice of the hidden state, ``attn_gate_init = 0.5``, scale 1). (The
  paper's BERT run adds ``--attn_gate_mlp``; ``--gate-mlp`` switches that on.)

**Task.** A synthetic key-value recall with "no-op" tokens, chosen because the paper traces
the outliers to heads that must *not* update most tokens: a sequence is a ``[BOS]``
delimiter followed by T - 1 tokens; most are key-value tokens (a distinct key out of
``keys`` and a value out of ``values``), a few are query tokens ``?k`` for a key present in
the sequence; a token is embedded as the sum of a kind, a key, a value and a position
embedding. The label of a key-value token is its own value (nothing to look up: the best
attention update is none), the label of a query token the value of the token with the same
key (one content lookup). Accuracy is measured on the query tokens (chance 1 / values).
A vanilla-softmax head can only "do nothing" for a token by putting its whole mass on a
token with a near-zero value (``[BOS]`` is there for that), which needs ever larger
logits; the clipped softmax reaches exact zeros with finite logits and the gate switches a
head off per token. ``--noise s`` adds Gaussian noise of std ``s`` to the non-[BOS]
embeddings, so that any attention away from [BOS] costs something (an experiment; default
0). (Handwritten digits as row tokens with a [CLS] token were not used:
only [CLS] is read, so nothing asks the other tokens to be left alone.)

**Outliers** (as the official ``validate_mlm.py``): for each sample the infinity norm
of a layer's tensor flattened over tokens and features, averaged over samples, maximum over
layers; the kurtosis of each sample's flattened tensor, averaged over samples and over the
layers' FFN outputs and layer outputs (``avg kurtosis``). Reported for the attention output
(after the output projection), the FFN output, the residual sum entering the second
LayerNorm (``FFN in + out``, where the paper finds the largest outliers) and the layer
output.

**W8A8** (the official quantization config): weights of every matrix (in-projection,
output projection, FFN, gate, embeddings, classifier) per-tensor symmetric min-max 8 bit;
activations per-tensor asymmetric 8 bit with the official running min-max (momentum 0.9)
over 16 training batches, at the embedding output, every linear layer's input and output
(the attention context before the output projection, the FFN hidden state), both residual
sums and both LayerNorm outputs. Biases, LayerNorm parameters, attention scores and
probabilities stay in floating point. ``softmaxkit.quant.UniformQuantizer`` accepts only
non-negative probabilities, so the signed activations use a small local fake-quantizer.

**4-bit probabilities.** Each ``softmaxkit.quant`` quantizer (one per layer, 4 bits; the
BiViT binarizer at its 1 bit) is passed as ``probs_quantizer`` of every attention layer,
calibrated with :func:`softmaxkit.quant.calibrate` on training batches, the rest in float.

Training: AdamW (lr 1e-3, weight decay 0.01 on matrices), linear warmup and decay, gradient
norm clipped at 1 (the BERT scripts' schedule, scaled down), batch 64, 1000 steps, one torch
thread (faster than two at this size, and far faster on a shared machine).

Run: ``PYTHONPATH=src python examples/quantizable_transformers.py`` (about 4.5 minutes on one
core; ``--quick``: 2 layers, T = 16, 150 steps, about 20 seconds). Writes
``--out`` (default ``./quantizable-transformers``)/``results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit import quant as Q
from softmaxkit.attention import MultiheadAttention

VARIANTS = ("vanilla", "clipped", "gated")
#: the BERT script's ``clipped(-.025:1)`` at max_seq_length 128, as alpha of gamma = -alpha / T
ALPHA = 0.025 * 128
PROBS_QUANTIZERS = {
    "uniform": lambda: Q.UniformQuantizer(4),
    "log2": lambda: Q.Log2Quantizer(4),
    "log-sqrt2": lambda: Q.LogSqrt2Quantizer(4),
    "adalog": lambda: Q.AdaLogQuantizer(4),
    "fp": lambda: Q.FPQuantizer(4),
    "binarizer (1 bit)": lambda: Q.SoftmaxBinarizer(),
}


@dataclass(frozen=True)
class Config:
    layers: int = 4
    d_model: int = 64
    heads: int = 4
    length: int = 32  # T, including [BOS]
    keys: int = 32
    values: int = 8
    queries: int = 6
    steps: int = 1000
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    eval_batches: int = 8
    calib_batches: int = 16
    batch_eval: int = 128
    gate_mlp: bool = False
    noise: float = 0.0  # std of Gaussian noise on the non-[BOS] token embeddings
    seed: int = 0


QUICK = Config(
    layers=2,
    length=16,
    keys=16,
    queries=3,
    steps=150,
    eval_batches=2,
    calib_batches=4,
    batch_eval=64,
)


# ----------------------------------------------------------------------------- the task


def make_batch(cfg: Config, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, T, 3) tokens and (n, T) labels. A token is (kind, key, value): kind 0 = [BOS]
    (key 0, value ``values``), 1 = key-value token, 2 = query ``?key`` (value ``values``:
    none). Keys are distinct within a sequence; queries ask for keys present in it. Labels
    are values in [0, values), -100 at [BOS]."""
    T, K, V = cfg.length, cfg.keys, cfg.values
    pairs = T - 1 - cfg.queries
    keys = torch.rand(n, K, generator=g).argsort(1)[:, :pairs]
    vals = torch.randint(0, V, (n, pairs), generator=g)
    asked = torch.randint(0, pairs, (n, cfg.queries), generator=g)
    kind = torch.cat([torch.ones(n, pairs), torch.full((n, cfg.queries), 2)], 1).long()
    key = torch.cat([keys, keys.gather(1, asked)], 1)
    val = torch.cat([vals, torch.full((n, cfg.queries), V)], 1)
    lab = torch.cat([vals, vals.gather(1, asked)], 1)
    order = torch.rand(n, T - 1, generator=g).argsort(1)
    body = torch.stack([kind, key, val], -1).gather(1, order[..., None].expand(-1, -1, 3))
    bos = torch.tensor([0, 0, V]).expand(n, 1, 3)
    tokens = torch.cat([bos, body], 1)
    labels = torch.cat([torch.full((n, 1), -100), lab.gather(1, order)], 1)
    return tokens, labels


def is_query(cfg: Config, tokens: torch.Tensor) -> torch.Tensor:
    return tokens[..., 0] == 2


# ---------------------------------------------------------------------------- the model


class ActQuant(nn.Module):
    """Per-tensor asymmetric fake-quantizer of a signed activation (the official
    ``asymmetric_uniform`` with the ``running_minmax`` range, momentum 0.9); identity while
    ``mode`` is ``"off"``, records the range while ``"calib"``, fake-quantizes while ``"on"``.
    Every value seen passes by, so the module also keeps the tensor for the outlier
    statistics while ``keep`` is True."""

    def __init__(self, bits: int = 8, momentum: float = 0.9) -> None:
        super().__init__()
        self.bits, self.momentum, self.mode, self.keep = bits, momentum, "off", False
        self.low: float | None = None
        self.high: float | None = None
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep:
            self.last = x.detach()
        if self.mode == "calib":
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if self.low is None:
                self.low, self.high = lo, hi
            else:
                m = self.momentum
                self.low, self.high = m * self.low + (1 - m) * lo, m * self.high + (1 - m) * hi
        elif self.mode == "on":
            levels = 2**self.bits - 1
            scale = max(self.high - self.low, 1e-12) / levels
            zero = min(max(round(-self.low / scale), 0), levels)
            codes = torch.clamp(torch.round(x / scale) + zero, 0, levels)
            return (codes - zero) * scale
        return x


class EncoderLayer(nn.Module):
    """Post-LN encoder layer with the quantization / observation points as modules."""

    def __init__(self, cfg: Config, variant: str) -> None:
        super().__init__()
        d, h = cfg.d_model, cfg.heads
        options: dict = {}
        if variant == "clipped":
            options = {"softmax": "clipped", "gamma": -ALPHA / cfg.length, "zeta": 1.0}
        elif variant == "gated":
            options = {"gate": "conditional_per_token", "gate_init": 0.5}
            if cfg.gate_mlp:
                options["gate_mlp_hidden"] = max(1, d // h // 4)  # official --attn_gate_mlp
        self.attn = MultiheadAttention(d, h, **options)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        names = ("context", "attn_out", "res1", "ln1", "hidden", "ffn_out", "res2", "out")
        self.q = nn.ModuleDict({name: ActQuant() for name in names})
        self.attn.out_proj.register_forward_pre_hook(self._quant_context)

    def _quant_context(self, module: nn.Module, args: tuple) -> tuple:
        """Pre-hook of the output projection (a bound method, so that a deep copy of the
        layer hooks its own copy): the attention context enters the ``context`` point."""
        return (self.q["context"](args[0]),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q
        a = q["attn_out"](self.attn(x, x, x, need_weights=False)[0])
        x = q["ln1"](self.ln1(q["res1"](x + a)))
        f = q["ffn_out"](self.fc2(q["hidden"](F.gelu(self.fc1(x)))))
        return q["out"](self.ln2(q["res2"](x + f)))


class Encoder(nn.Module):
    def __init__(self, cfg: Config, variant: str) -> None:
        super().__init__()
        self.kind = nn.Embedding(3, cfg.d_model)
        self.key = nn.Embedding(cfg.keys, cfg.d_model)
        self.val = nn.Embedding(cfg.values + 1, cfg.d_model)
        self.pos = nn.Embedding(cfg.length, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.q_embed = ActQuant()
        self.layers = nn.ModuleList(EncoderLayer(cfg, variant) for _ in range(cfg.layers))
        self.head = nn.Linear(cfg.d_model, cfg.values)
        self.noise = cfg.noise

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        kind, key, val = tokens.unbind(-1)
        x = self.kind(kind) + self.key(key) + self.val(val) + pos
        if self.noise > 0:  # seeded per call through the global generator
            x = x + self.noise * torch.randn_like(x) * (kind != 0).unsqueeze(-1)
        return self.q_embed(self.ln(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def act_quants(model: Encoder) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


# --------------------------------------------------------------------- train / evaluate


def train(cfg: Config, variant: str) -> Encoder:
    torch.manual_seed(cfg.seed)
    model = Encoder(cfg, variant)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
    )

    def lr_at(step: int) -> float:  # linear warmup, linear decay (the paper's BERT schedule)
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    for _ in range(cfg.steps):
        tokens, labels = make_batch(cfg, cfg.batch, g)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the paper's max_grad_norm
        opt.step()
        sched.step()
    model.eval()
    return model


def batches(cfg: Config, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [make_batch(cfg, cfg.batch_eval, g) for _ in range(count)]


@torch.no_grad()
def accuracy(cfg: Config, model: nn.Module, data) -> float:
    right = total = 0
    for tokens, labels in data:
        pred = model(tokens).argmax(-1)
        mask = is_query(cfg, tokens)
        right += int((pred[mask] == labels[mask]).sum())
        total += int(mask.sum())
    return right / total


def _kurtosis(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row kurtosis of (B, n), the official ``utils.kurtosis``."""
    mu = x.mean(1, keepdim=True)
    return ((x - mu) ** 4).mean(1) / (x.std(1) ** 4 + eps)


@torch.no_grad()
def outliers(model: Encoder, data) -> dict[str, float]:
    """Infinity norms and kurtosis as the official ``validate_mlm.py`` (see the docstring)."""
    points = ("attn_out", "ffn_out", "res2", "out")
    inf = {(i, p): [] for i in range(len(model.layers)) for p in points}
    kurt = {(i, p): [] for i in range(len(model.layers)) for p in points}
    for layer in model.layers:
        for p in points:
            layer.q[p].keep = True
    try:
        for tokens, _ in data:
            model(tokens)
            for i, layer in enumerate(model.layers):
                for p in points:
                    x = layer.q[p].last.flatten(1).double()
                    inf[(i, p)].append(x.abs().amax(1))
                    kurt[(i, p)].append(_kurtosis(x))
    finally:
        for layer in model.layers:
            for p in points:
                layer.q[p].keep, layer.q[p].last = False, None
    n = len(model.layers)
    mean = {k: float(torch.cat(v).mean()) for k, v in inf.items()}
    km = {k: float(torch.cat(v).mean()) for k, v in kurt.items()}
    return {
        "max_inf_attn_out": max(mean[(i, "attn_out")] for i in range(n)),
        "max_inf_ffn_out": max(mean[(i, "ffn_out")] for i in range(n)),
        "max_inf_ffn_in_plus_out": max(mean[(i, "res2")] for i in range(n)),
        "max_inf_layer_out": max(mean[(i, "out")] for i in range(n)),
        "avg_kurtosis_attn_out": sum(km[(i, "attn_out")] for i in range(n)) / n,
        "avg_kurtosis": sum(km[(i, p)] for i in range(n) for p in ("ffn_out", "out")) / (2 * n),
        "max_kurtosis": max(km[(i, p)] for i in range(n) for p in ("ffn_out", "out")),
    }


@torch.no_grad()
def bos_mass(model: Encoder, data) -> float:
    """Mean attention probability on [BOS] from non-[BOS] queries (all layers and heads):
    how much the heads "park" their attention on the delimiter."""
    total = []
    for tokens, _ in data[:2]:
        x = model.embed(tokens)
        for layer in model.layers:
            _, w = layer.attn(x, x, x, need_weights=True, average_attn_weights=False)
            total.append(w[..., 1:, 0].mean())
            x = layer(x)
    return float(torch.stack(total).mean())


def _fake_weight(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-tensor symmetric min-max fake-quant (the official ``symmetric_uniform`` weights)."""
    top = 2 ** (bits - 1) - 1
    scale = w.abs().max().clamp_min(1e-12) / top
    return torch.clamp(torch.round(w / scale), -top - 1, top) * scale


class _Identity(nn.Module):
    """An identity 'probabilities quantizer': routes a plain MultiheadAttention through
    softmaxkit's own path, so that its output projection is called as a module and the
    context before it can be fake-quantized (torch's fused path never calls it)."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p


@torch.no_grad()
def w8a8_accuracy(cfg: Config, model: Encoder, calib, data) -> float:
    qm = copy.deepcopy(model)
    for p in qm.parameters():
        if p.ndim >= 2:
            p.copy_(_fake_weight(p))
    for layer in qm.layers:
        if layer.attn.softmax == "softmax" and layer.attn.gate is None:
            layer.attn.probs_quantizer = _Identity()
    quants = act_quants(qm)
    for m in quants:
        m.mode = "calib"
    for tokens, _ in calib:
        qm(tokens)
    for m in quants:
        m.mode = "on"
    return accuracy(cfg, qm, data)


def probs_accuracy(cfg: Config, model: Encoder, factory, calib, data) -> float:
    qm = copy.deepcopy(model)
    for layer in qm.layers:
        layer.attn.probs_quantizer = factory()
    Q.calibrate(qm, [tokens for tokens, _ in calib])
    return accuracy(cfg, qm, data)


# -------------------------------------------------------------------------------- main


def run_variant(cfg: Config, variant: str, calib, data) -> dict:
    start = time.perf_counter()
    model = train(cfg, variant)
    trained = time.perf_counter()
    row: dict = {"variant": variant, "train_seconds": round(trained - start, 1)}
    row["float_acc"] = accuracy(cfg, model, data)
    row.update(outliers(model, data))
    row["bos_mass"] = bos_mass(model, data)
    row["w8a8_acc"] = w8a8_accuracy(cfg, model, calib, data)
    row["probs4_acc"] = {
        name: probs_accuracy(cfg, model, f, calib[:4], data) for name, f in PROBS_QUANTIZERS.items()
    }
    row["eval_seconds"] = round(time.perf_counter() - trained, 1)
    return row


def format_tables(rows: list[dict]) -> str:
    lines = [
        "| variant | float acc | W8A8 acc | max inf attn out | max inf FFN out "
        "| max inf FFN in+out | max inf layer out | avg kurtosis | kurtosis attn out "
        "| mass on [BOS] |",
        "|---|" + "---|" * 9,
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['float_acc']:.3f} | {r['w8a8_acc']:.3f} "
            f"| {r['max_inf_attn_out']:.1f} | {r['max_inf_ffn_out']:.1f} "
            f"| {r['max_inf_ffn_in_plus_out']:.1f} | {r['max_inf_layer_out']:.1f} "
            f"| {r['avg_kurtosis']:.1f} | {r['avg_kurtosis_attn_out']:.1f} "
            f"| {r['bos_mass']:.2f} |"
        )
    names = list(rows[0]["probs4_acc"])
    lines += ["", "4-bit attention probabilities (accuracy; the rest in float):", ""]
    lines.append("| variant | float | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for r in rows:
        cells = " | ".join(f"{r['probs4_acc'][n]:.3f}" for n in names)
        lines.append(f"| {r['variant']} | {r['float_acc']:.3f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and budget (seconds)")
    parser.add_argument("--out", default="quantizable-transformers", help="output folder")
    parser.add_argument("--steps", type=int, help="training steps (default 1000; quick 150)")
    parser.add_argument("--layers", type=int, help="encoder layers (default 4; quick 2)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--noise", type=float, help="embedding noise std (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gate-mlp", action="store_true", help="the BERT run's MLP gate")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest at this size)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    cfg = replace(cfg, seed=args.seed, gate_mlp=args.gate_mlp)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.layers is not None:
        cfg = replace(cfg, layers=args.layers)
    if args.noise is not None:
        cfg = replace(cfg, noise=args.noise)
    if args.lr is not None:
        cfg = replace(cfg, lr=args.lr)
    if args.weight_decay is not None:
        cfg = replace(cfg, weight_decay=args.weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    calib = batches(cfg, cfg.calib_batches, 10_000 + cfg.seed)  # training distribution
    data = batches(cfg, cfg.eval_batches, 20_000 + cfg.seed)
    start = time.perf_counter()
    rows = [run_variant(cfg, variant, calib, data) for variant in args.variants]
    result = {
        "config": asdict(cfg),
        "gamma": -ALPHA / cfg.length,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    table = format_tables(rows)
    print(table)
    print(f"\n{result['seconds']} s, {torch.get_num_threads()} threads")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    result["table"] = table
    return result


if __name__ == "__main__":
    main()
