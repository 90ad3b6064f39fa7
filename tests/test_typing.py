"""The public API type-checks under ``mypy --strict`` and its overloads give the right types.

One mypy run (the package and a small user snippet together, with the ``[tool.mypy]``
config of pyproject.toml): no errors anywhere, and ``reveal_type`` in the snippet shows
that ``return_indices`` / ``return_extras`` / ``return_params`` select the return type.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """\
import torch
from softmaxkit.functional import topk_softmax
from softmaxkit.heads import LinearCrossEntropy, linear_cross_entropy
from softmaxkit.labels import dawid_skene

x = torch.randn(4, 8)
w = torch.randn(5, 8)
y = torch.randint(0, 5, (4,))
flag: bool = bool(y.sum() > 0)
head = LinearCrossEntropy(8, 5)

reveal_type(topk_softmax(x, 2))
reveal_type(topk_softmax(x, 2, return_indices=False))
reveal_type(topk_softmax(x, 2, return_indices=True))
reveal_type(topk_softmax(x, 2, return_indices=flag))
reveal_type(linear_cross_entropy(x, w, y))
reveal_type(linear_cross_entropy(x, w, y, return_extras=True))
reveal_type(linear_cross_entropy(x, w, y, return_extras=flag))
reveal_type(head.forward(x, y))
reveal_type(head.forward(x, y, return_extras=True))
reveal_type(dawid_skene(y.view(4, 1), 5))
reveal_type(dawid_skene(y.view(4, 1), 5, return_params=True))
"""

TENSOR = "torch._tensor.Tensor"
# NamedTuples are revealed with their fields
EXTRAS = f"tuple[{TENSOR}, {TENSOR}, {TENSOR}, fallback=softmaxkit.heads.linear_ce."
EXTRAS += "LinearCrossEntropyExtras]"
FIT = f"tuple[{TENSOR}, {TENSOR}, {TENSOR}, int, fallback=softmaxkit.labels.aggregate."
FIT += "DawidSkeneFit]"
EXPECTED = [
    TENSOR,
    TENSOR,
    f"tuple[{TENSOR}, {TENSOR}]",
    f"{TENSOR} | tuple[{TENSOR}, {TENSOR}]",
    TENSOR,
    f"tuple[{TENSOR}, {EXTRAS}]",
    f"{TENSOR} | tuple[{TENSOR}, {EXTRAS}]",
    TENSOR,
    f"tuple[{TENSOR}, {EXTRAS}]",
    TENSOR,
    FIT,
]


def test_mypy_strict_passes_and_overloads_select_return_types(tmp_path: Path) -> None:
    snippet = tmp_path / "user_code.py"
    snippet.write_text(SNIPPET)
    stdout, stderr, status = api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(ROOT / "src" / "softmaxkit"),
            str(snippet),
        ]
    )
    lines = stdout.splitlines()
    errors = [line for line in lines if ": error:" in line]
    assert not errors and not stderr, stdout + stderr
    revealed = [
        m.group(1)
        for line in lines
        if (m := re.search(r'user_code\.py:\d+: note: Revealed type is "(.*)"$', line))
    ]
    assert revealed == EXPECTED, stdout
    assert status == 0, stdout + stderr
