"""Inputs and comparisons shared by the ops tests.

Every op of DESIGN §1's table is described once here: which gates it takes and in which form, so a
test can loop over all of them. Inputs are fresh random tensors, never zeros: ``k`` is
L2-normalised (so a delta step ``I − β k kᵀ`` with ``β ∈ [0, 2]`` is a contraction, as in the
models), log-decays are ``logsigmoid`` of a wide normal (a mix of strong and weak decay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gatedelta import ops

Tensor = torch.Tensor


@dataclass(frozen=True)
class OpSpec:
    """How to call one op: its positional gates, each ``(kind, form)``.

    kind: ``"g"`` (log-decay), ``"erase"`` (b / beta) or ``"write"`` (w); form: ``"head"`` or
    ``"channel"``. ``beta`` of kda/gdn/delta_rule is one head-form gate used for erase and write.
    """

    name: str
    gates: tuple[tuple[str, str], ...]

    @property
    def fn(self) -> Callable[..., tuple[Tensor, Tensor | None]]:
        return getattr(ops, self.name)


OPS = {
    "gdn2": OpSpec("gdn2", (("g", "channel"), ("erase", "channel"), ("write", "channel"))),
    "kda": OpSpec("kda", (("g", "channel"), ("erase", "head"))),
    "gdn": OpSpec("gdn", (("g", "head"), ("erase", "head"))),
    "delta_rule": OpSpec("delta_rule", (("erase", "head"),)),
    "gla": OpSpec("gla", (("g", "channel"), ("write", "channel"))),
    "ssd": OpSpec("ssd", (("g", "head"), ("write", "head"))),
    "linear_attn": OpSpec("linear_attn", ()),
}
OP_NAMES = tuple(OPS)


def gen(seed: int | None = None) -> torch.Generator:
    """A generator seeded freshly (from the global RNG unless a seed is given)."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return torch.Generator().manual_seed(seed)


def log_decay(shape: tuple[int, ...], dtype: torch.dtype, g_: torch.Generator) -> Tensor:
    """Log-decays in (−inf, 0): strong and weak decay mixed, never exactly 0."""
    return F.logsigmoid(3.0 * torch.randn(shape, dtype=dtype, generator=g_) + 2.0)


def gate_tensor(kind: str, form: str, B: int, T: int, HV: int, K: int, V: int,
                dtype: torch.dtype, g_: torch.Generator) -> Tensor:
    """A random gate of the given kind and form (float32/64 log-decay; erase in [0, 2])."""
    last = {"g": K, "erase": K, "write": V}[kind]
    shape = (B, T, HV) if form == "head" else (B, T, HV, last)
    if kind == "g":
        return log_decay(shape, torch.float64 if dtype == torch.float64 else torch.float32, g_)
    if kind == "erase":
        return 2.0 * torch.rand(shape, dtype=dtype, generator=g_)
    return 0.5 + torch.rand(shape, dtype=dtype, generator=g_)


def make_inputs(op: str, *, B: int = 2, T: int = 37, H: int = 2, G: int = 2, K: int = 16, V: int = 8,
                dtype: torch.dtype = torch.float64, seed: int | None = None,
                ) -> tuple[tuple[Tensor, ...], Tensor]:
    """Positional inputs ``(q, k, v, *gates)`` of ``op`` and a random initial state ``[B, HV, K, V]``."""
    g_ = gen(seed)
    HV = H * G
    q = torch.randn(B, T, H, K, dtype=dtype, generator=g_)
    k = F.normalize(torch.randn(B, T, H, K, dtype=torch.float64, generator=g_), dim=-1).to(dtype)
    v = torch.randn(B, T, HV, V, dtype=dtype, generator=g_)
    gates = tuple(gate_tensor(kind, form, B, T, HV, K, V, dtype, g_) for kind, form in OPS[op].gates)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    s0 = torch.randn(B, HV, K, V, dtype=sdt, generator=g_)
    return (q, k, v, *gates), s0


def gate_kwargs(op: str, gates: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """The gates of ``op`` as ``g``/``b``/``w`` keywords of the general recurrence.

    ``beta`` (kda, gdn, delta_rule) serves as both erase ``b`` and write ``w``.
    """
    kw = {}
    for (kind, _), x in zip(OPS[op].gates, gates):
        if kind == "g":
            kw["g"] = x
        elif kind == "erase":
            kw["b"] = x
            if op in ("kda", "gdn", "delta_rule"):
                kw["w"] = x
        else:
            kw["w"] = x
    return kw


def run(op: str, args: tuple[Tensor, ...], backend: str, **kw) -> tuple[Tensor, Tensor | None]:
    return OPS[op].fn(*args, backend=backend, **kw)


def to64(args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(a.double() for a in args)


def rel_err(x: Tensor, ref: Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64; NaN or inf anywhere gives inf (never passes)."""
    x, ref = x.double(), ref.double()
    if not bool(torch.isfinite(x).all()):
        return float("inf")
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 5e-3}
