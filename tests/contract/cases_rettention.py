"""Contract cases of Re-ttention in ``softmaxkit.attention``: ``Rettention``,
``RettentionSchedule`` and ``local_band_mask``.

A Rettention sample is a whole denoising loop: stacked per-step queries, keys and values
(T, B, H, S, E) that drift slowly from step to step; the op runs one call per step under
``torch.no_grad()`` and returns the stacked outputs (T, B, H, S, Ev), compared with the
float64 transcription of the paper and the official step logic in
``tests/reference/rettention_ref.py``.
"""

from __future__ import annotations

import torch

from softmaxkit import attention as A
from tests.contract.inputs import keep, np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import rettention_ref

INFERENCE_ONLY = (
    "inference only: Rettention defines no gradient (its cache changes on every call) and "
    "raises when called with gradients enabled on inputs that require grad"
)


def drifting(steps, batch, heads, size, features, *, dtype, seed, drift=0.05):
    """(T, B, H, S, E): a seeded start plus a slow random walk, like denoising steps."""
    base = randn(1, batch, heads, size, features, seed=seed, scale=1.5)
    walk = randn(steps, batch, heads, size, features, seed=seed + 1, scale=drift).cumsum(0)
    return (base + walk).to(dtype)


def loop(steps, batch=1, heads=2, size=11, features=4, dtype=torch.float64, seed=0):
    return tuple(
        drifting(steps, batch, heads, size, features, dtype=dtype, seed=seed + 10 * i)
        for i in range(3)
    )


def rettention_op(
    qs,
    ks,
    vs,
    *,
    window=None,
    density=0.03125,
    full_steps=1,
    refresh_every=None,
    refresh_steps=(),
    ratio_drift=0.04,
    clamp_ratio=False,
    use_ratio=True,
    prefix_tokens=0,
    frames=1,
    key_mask=None,
):
    schedule = A.RettentionSchedule(
        full_steps=full_steps, refresh_every=refresh_every, refresh_steps=refresh_steps
    )
    rett = A.Rettention(
        window=window,
        density=density,
        schedule=schedule,
        ratio_drift=ratio_drift,
        clamp_ratio=clamp_ratio,
        use_ratio=use_ratio,
        prefix_tokens=prefix_tokens,
        frames=frames,
    )
    with torch.no_grad():
        outs = [rett(q, k, v, key_mask=key_mask) for q, k, v in zip(qs, ks, vs)]
    return torch.stack(outs) if outs else vs.new_zeros(vs.shape)


def rettention_reference(
    qs,
    ks,
    vs,
    *,
    window=None,
    density=0.03125,
    full_steps=1,
    refresh_every=None,
    refresh_steps=(),
    ratio_drift=0.04,
    clamp_ratio=False,
    use_ratio=True,
    prefix_tokens=0,
    frames=1,
    key_mask=None,
):
    size = qs.shape[-2]
    frame = (size - prefix_tokens) // frames
    window = int(frame * density) if window is None else window
    sparse = rettention_ref.cog_mask(size, prefix_tokens, frames, window)
    return rettention_ref.run(
        np64(qs),
        np64(ks),
        np64(vs),
        window,
        full_steps,
        refresh_every,
        refresh_steps,
        drift=ratio_drift,
        key_keep=None if key_mask is None else key_mask.numpy(),
        clamp=clamp_ratio,
        use_ratio=use_ratio,
        sparse=sparse,
    )


def rettention_samples(dtype):
    mask = keep(2, 13, seed=5, p=0.25)
    mask[1, 9:] = False  # a padded tail: rows near it have no kept key in their band
    return [
        # full, refresh, then sparse steps with the drift, and a second refresh
        Sample(loop(6, dtype=dtype), {"window": 4, "full_steps": 1, "refresh_every": 3}),
        # key padding on every path, an odd size, a window wider than the band's block
        Sample(
            loop(5, batch=2, size=13, features=3, dtype=dtype, seed=3),
            {"window": 5, "full_steps": 2, "refresh_steps": (2,), "key_mask": mask},
        ),
        # the official width int(S * density); value features differ from key features
        Sample(
            (*loop(4, size=16, features=4, dtype=dtype, seed=6)[:2],)
            + (drifting(4, 1, 2, 16, 6, dtype=dtype, seed=9),),
            {"density": 0.25, "full_steps": 0, "refresh_every": 4, "clamp_ratio": True},
        ),
        # the CogVideoX layout: always-attended prefix (text) tokens, a band per frame
        Sample(
            loop(5, batch=2, size=2 + 3 * 5, dtype=dtype, seed=15),
            {
                "window": 2,
                "prefix_tokens": 2,
                "frames": 3,
                "full_steps": 1,
                "refresh_every": 2,
                "key_mask": keep(2, 17, seed=16, p=0.2),
            },
        ),
        # the official residual-only mode (use_ratio = False)
        Sample(
            loop(4, dtype=dtype, seed=12),
            {"window": 3, "full_steps": 1, "refresh_every": 5, "use_ratio": False},
        ),
    ]


RETTENTION = Case(
    name="softmaxkit.attention.Rettention",
    op=rettention_op,
    samples=rettention_samples,
    reference=rettention_reference,
    gradcheck=False,
    empty=lambda: Sample(loop(3, batch=0), {"window": 2, "full_steps": 1, "refresh_every": 2}),
    tol={torch.bfloat16: {"atol": 3e-2, "rtol": 5e-2}},
    bad=[
        Bad({"window": -1}, ValueError, "window"),
        Bad({"window": 2.5}, TypeError, "window"),
        Bad({"density": 0.0}, ValueError, "density"),
        Bad({"ratio_drift": -0.1}, ValueError, "ratio_drift"),
        Bad({"clamp_ratio": 1}, TypeError, "clamp_ratio"),
        Bad({"use_ratio": None}, TypeError, "use_ratio"),
        Bad({"frames": 2}, ValueError, "frames=2"),
        Bad({"prefix_tokens": -1}, ValueError, "prefix_tokens"),
        Bad({"key_mask": torch.ones(1, 11)}, TypeError, "key_mask"),
        Bad({"key_mask": torch.ones(1, 10, dtype=torch.bool)}, ValueError, "key_mask"),
        Bad({}, ValueError, "key", args={1: randn(6, 1, 2, 10, 4, dtype=torch.float32)}),
        Bad({}, ValueError, "value", args={2: randn(6, 1, 3, 11, 4, dtype=torch.float32)}),
        Bad({}, TypeError, "value", args={2: randn(6, 1, 2, 11, 4, dtype=torch.float64)}),
        Bad({}, TypeError, "query", args={0: torch.zeros(6, 1, 2, 11, 4, dtype=torch.long)}),
    ],
    skip={"gradcheck": INFERENCE_ONLY},
)


# ------------------------------------------------------------------ the schedule presets

# the official numbers, read from the processors of cccrrrccc/Re-ttention:
# pixart_processor.py: stepi < 5 full, stepi in [5, 10, 15] refresh;
# Cog_processor.py: stepi < 15 full, stepi % 5 == 0 refresh;
# hunyuan_processor.py: stepi < 10 full, stepi % 5 == 0 refresh.
OFFICIAL = {
    "pixart": {"full_steps": 5, "refresh_steps": (5, 10, 15)},
    "cogvideox": {"full_steps": 15, "refresh_every": 5},
    "hunyuan": {"full_steps": 10, "refresh_every": 5},
}


def schedule_op(qs, ks, vs, *, preset, window=4):
    rett = A.Rettention(window=window, schedule=getattr(A.RettentionSchedule, preset)())
    with torch.no_grad():
        return torch.stack([rett(q, k, v) for q, k, v in zip(qs, ks, vs)])


def schedule_reference(qs, ks, vs, *, preset, window=4):
    return rettention_ref.run(np64(qs), np64(ks), np64(vs), window, **OFFICIAL[preset])


def schedule_samples(dtype):
    return [
        Sample(loop(18, heads=1, size=9, dtype=dtype, seed=20), {"preset": "pixart"}),
        Sample(loop(22, heads=1, size=9, dtype=dtype, seed=21), {"preset": "cogvideox"}),
        Sample(loop(17, heads=1, size=9, dtype=dtype, seed=22), {"preset": "hunyuan"}),
    ]


SCHEDULE = Case(
    name="softmaxkit.attention.RettentionSchedule",
    op=schedule_op,
    samples=schedule_samples,
    reference=schedule_reference,
    gradcheck=False,
    empty=lambda: Sample(loop(6, batch=0), {"preset": "pixart"}),
    tol={torch.bfloat16: {"atol": 3e-2, "rtol": 5e-2}},
    skip={"gradcheck": INFERENCE_ONLY},
)


# --------------------------------------------------------------------------- the band


def band_op(x, window):
    return x * A.local_band_mask(x.shape[-1], window)


def band_reference(x, window):
    return np64(x) * rettention_ref.band(x.shape[-1], window)


BAND = Case(
    name="softmaxkit.attention.local_band_mask",
    op=band_op,
    samples=lambda dtype: [
        Sample((randn(7, 7, dtype=dtype, seed=30), 4), grad=(0,)),
        Sample((randn(3, 6, 6, dtype=dtype, seed=31), 3), grad=(0,)),
        Sample((randn(5, 5, dtype=dtype, seed=32), 0), grad=(0,)),
        Sample((randn(4, 4, dtype=dtype, seed=33), 100), grad=(0,)),
    ],
    reference=band_reference,
    empty=lambda: Sample((randn(0, 0), 3), grad=(0,)),
    bad=[
        Bad({}, ValueError, "window", args={1: -1}),
        Bad({}, TypeError, "window", args={1: 1.5}),
    ],
)

register(RETTENTION, SCHEDULE, BAND)
