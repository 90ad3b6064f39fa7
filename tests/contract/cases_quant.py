"""Contract cases of ``softmaxkit.quant``: every name in its ``__all__``.

A quantizer is a module with a calibration step, so each case's op builds the quantizer
from the sample's keyword arguments, calibrates it on one fixed float64 calibration
tensor (the parameters are then the same for every dtype of the input), and returns its
forward pass on the input. The references recompute the calibration from the papers'
rules (``tests/reference/quant_ref.py``).
"""

from __future__ import annotations

import torch

from softmaxkit import quant as Q
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import quant_ref as R

STE = (
    "straight-through estimator: the documented gradient (1 inside the range, 0 where "
    "clipped) is not the derivative of the piecewise-constant forward; tests/quant checks it"
)
COMPILED = (
    "the op builds and calibrates a module per call; the calibrated forward of every "
    "quantizer is compiled in tests/quant/test_quant.py::test_compile_of_a_calibrated_forward"
)


def _probs(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).softmax(-1)


CAL = _probs(6, 32, seed=40)  # the calibration data of every case


def samples_for(*kwargs: dict):
    def samples(dtype: torch.dtype) -> list[Sample]:
        x = _probs(3, 4, 16, seed=41).to(dtype)
        x2 = torch.cat([_probs(2, 16, seed=42).reshape(-1), torch.tensor([0.0, 1.0, 0.5])])
        out = [Sample((x,), dict(kwargs[0]), grad=(0,))]
        out += [Sample((x2.to(dtype),), dict(k), grad=(0,)) for k in kwargs[1:]]
        return out

    return samples


def empty() -> Sample:
    return Sample((torch.empty(0, 16, dtype=torch.float64),), {"bits": 4}, grad=(0,))


def bad_input(**kwargs) -> list[Bad]:
    return [
        Bad({}, ValueError, "input", args={0: torch.tensor([0.5, -0.25])}),
        Bad({}, TypeError, "input", args={0: torch.tensor([1, 2])}),
        *[Bad({k: val}, error, k) for k, (val, error) in kwargs.items()],
    ]


def run(cls):
    def op(x: torch.Tensor, **kwargs) -> torch.Tensor:
        q = cls(**kwargs)
        q.start_calibration()
        q(CAL)
        q.finish_calibration()
        return q(x)

    op.__name__ = f"calibrated_{cls.__name__}"
    return op


def quant_case(name: str, cls, reference, kwargs: list[dict], **fields) -> Case:
    return Case(
        name=f"softmaxkit.quant.{name}",
        op=run(cls),
        samples=samples_for(*kwargs),
        reference=reference,
        empty=empty,
        compile=False,
        gradcheck=False,
        skip={"compile": COMPILED, "gradcheck": STE, **fields.pop("skip", {})},
        **fields,
    )


# ---------------------------------------------------------------- the base class
class _Grid(Q.Quantizer):
    """The smallest concrete quantizer: the uniform grid k / (2^b - 1) on [0, 1]."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.max_code = 2**bits - 1

    def _fit(self, sample: torch.Tensor) -> None:
        pass

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(self.max_code).round_().clamp_(0, self.max_code)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes / self.max_code

    def _inside(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return x <= 1


def grid_ref(x, *, bits):
    return R.uniform(x, 1 / (2**bits - 1), bits)


# ---------------------------------------------------------------- references
def uniform_ref(x, *, bits, calibration="minmax", percentile=R.REPQ_PERCENTILES):
    if calibration == "minmax":
        high = float(CAL.max())
    else:
        levels = percentile if isinstance(percentile, tuple) else (percentile,)
        high = R.uniform_percentile_high(CAL, bits, levels)
    return R.uniform(x, high / (2**bits - 1), bits)


def log_ref(grid):
    def reference(x, *, bits, scale=None):
        delta = R.log_scale_search(CAL, bits, grid) if scale is None else scale
        return grid(x, delta, bits)

    return reference


def adalog_ref(x, *, bits, mode="hardware", eq_n=128, base_q=None):
    q = R.adalog_search(CAL, bits, eq_n, mode) if base_q is None else base_q
    return R.adalog(x, q, bits, mode)


def fp_ref(x, *, bits, mantissa_bits=None, bias=None, eq_n=100):
    if bias is None:
        mantissa_bits, bias = R.fp_search(CAL, bits, float(CAL.max()), eq_n=eq_n)
    return R.fp_quant(x, bits, mantissa_bits, bias)


def binarizer_ref(x, *, ratio=0.25, per_row=True):
    if per_row:
        return R.bivit(x, ratio)
    return R.bivit_tensor(x, ratio * R.np64(CAL).max(-1).mean())


def calibrate_op(x: torch.Tensor, *, bits: int) -> torch.Tensor:
    model = torch.nn.Sequential(torch.nn.Identity(), Q.LogSqrt2Quantizer(bits))
    Q.calibrate(model, [CAL[:3], CAL[3:]])
    return model(x)


BITS_BAD = {"bits": (9, ValueError)}

register(
    Case(
        name="softmaxkit.quant.Quantizer",
        op=run(_Grid),
        samples=samples_for({"bits": 3}, {"bits": 8}),
        reference=grid_ref,
        empty=empty,
        compile=False,
        gradcheck=False,
        bad=bad_input(),
        skip={"compile": COMPILED, "gradcheck": STE},
    ),
    quant_case(
        "UniformQuantizer",
        Q.UniformQuantizer,
        uniform_ref,
        [
            {"bits": 4},
            {"bits": 2},
            {"bits": 8, "calibration": "percentile"},
            {"bits": 3, "calibration": "percentile", "percentile": 0.99},
        ],
        bad=bad_input(**BITS_BAD, calibration=("mse", ValueError)),
    ),
    quant_case(
        "Log2Quantizer",
        Q.Log2Quantizer,
        log_ref(R.log2_quant),
        [{"bits": 4}, {"bits": 8}, {"bits": 3, "scale": 0.5}],
        bad=bad_input(**BITS_BAD, scale=(-1.0, ValueError)),
    ),
    quant_case(
        "LogSqrt2Quantizer",
        Q.LogSqrt2Quantizer,
        log_ref(R.log_sqrt2_repq),
        [{"bits": 4}, {"bits": 8}, {"bits": 2, "scale": 0.3}],
        bad=bad_input(**BITS_BAD, scale=(0.0, ValueError)),
    ),
    quant_case(
        "AdaLogQuantizer",
        Q.AdaLogQuantizer,
        adalog_ref,
        [
            {"bits": 4},
            {"bits": 3, "mode": "simulated", "eq_n": 64},
            {"bits": 8, "base_q": 23},
        ],
        bad=bad_input(**BITS_BAD, mode=("fast", ValueError), base_q=(0, ValueError)),
    ),
    quant_case(
        "FPQuantizer",
        Q.FPQuantizer,
        fp_ref,
        [
            {"bits": 4, "eq_n": 20},
            {"bits": 8, "eq_n": 10},
            {"bits": 5, "mantissa_bits": 2, "bias": 4.3},
        ],
        bad=bad_input(**BITS_BAD, mantissa_bits=(7, ValueError)),
    ),
    Case(
        name="softmaxkit.quant.SoftmaxBinarizer",
        op=run(Q.SoftmaxBinarizer),
        samples=samples_for({}, {"ratio": 0.5}, {"per_row": False}),
        reference=binarizer_ref,
        empty=lambda: Sample((torch.empty(0, 16, dtype=torch.float64),), grad=(0,)),
        compile=False,
        gradcheck=False,
        bad=bad_input(ratio=(1.5, ValueError), per_row=(1, TypeError)),
        skip={"compile": COMPILED, "gradcheck": STE},
    ),
    Case(
        name="softmaxkit.quant.calibrate",
        op=calibrate_op,
        samples=samples_for({"bits": 4}, {"bits": 6}),
        reference=lambda x, *, bits: log_ref(R.log_sqrt2_repq)(x, bits=bits),
        empty=empty,
        compile=False,
        gradcheck=False,
        bad=bad_input(),
        skip={"compile": COMPILED, "gradcheck": STE},
    ),
)
