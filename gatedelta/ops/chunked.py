"""The general recurrence in chunkwise (WY) form, in pure PyTorch: backend ``"torch"``.

DESIGN §1. The sequence is cut into chunks of C tokens. Inside a chunk the delta updates compose
into one unit-lower-triangular system (the WY representation); across chunks only the ``K×V``
state travels. Per chunk, rows are tokens, ``γ_r = exp(Σ_{i≤r} g_i)``; ``scale`` multiplies O:

    T  = strict_tril(E ⊛ K),  M = tril(Q ⊛ K),   (X ⊛ K)[r, s] = x_rᵀ Diag(γ_r/γ_s) k_s
    (I + T) [W | R] = [Ē | Z]                     Ē rows γ_r⊙e_r,  Z rows w_r⊙v_r
    U = R − W S₀,   O = Q_γ S₀ + M U,   S_C = Diag(γ_C) S₀ + K̃ᵀ U,   K̃ rows (γ_C/γ_s)⊙k_s

Stages of :func:`recurrence`, one block of chunks at a time:

1. layout: the block's tokens become ``[rows, chunks, H, G, C, ...]``; with ``cu_seqlens`` each
   sequence is padded to whole chunks and the sequences follow each other, so no chunk straddles
   two sequences;
2. the intra-chunk terms ``Q_γ, M, W, R, K̃`` of all the block's chunks at once;
3. a loop over the block's chunks carries the state (reset where a packed sequence starts):
   two small matmuls per chunk, ``U = R − W S₀`` and ``S_C = Diag(γ_C) S₀ + K̃ᵀ U``;
4. ``O = scale · (Q_γ S₀ + M U)`` for the block; 5. written straight into the output ``[B, T, HV, V]``.

Without autograd (per-channel decay with erase: gdn2, kda) every block's terms land in buffers
allocated once per call, so stages 3 and 4 run on per-chunk views built once (:class:`_PairWork`,
:func:`_bmm3`, :class:`_StateWork`): the state loop is then three ops per chunk and nothing else.

Blocks bound the working memory: besides the output only per-block tensors exist (O(T·HV·V) in
all), never a ``[T, T]`` matrix, a per-token state or a padded copy of the inputs.

Numerics: every decay factor is ``exp`` of a sum of g over a segment ``(s, r]`` or a product of
such factors (each ≤ 1), never a difference of two cumulative sums (after a hard reset that is
``−inf − (−inf) = NaN``) and never ``1/γ``. Nothing overflows, and every ``g ∈ [−inf, 0]`` gives
finite values and finite gradients. Segment sums come from cumulative sums of g, masked
cumulative sums (:func:`_segsum`), or matmuls with 0/1 matrices on g clamped to :data:`G_FLOOR`
(exact: any segment holding a clamped value has a factor that underflows to 0 either way).
Masked entries are chosen with ``torch.where`` or ``tril`` (never multiplied by a 0/1 mask), so
``−inf`` never meets a ``0·``.

GVA: ``q`` and ``k`` keep their H heads; value heads are laid out as ``[H, G]`` with
``G = HV // H`` and ``q``/``k`` broadcast over ``G`` (never repeated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .spec import Recurrence

Tensor = torch.Tensor

CHUNK = 32
"""Default chunk length C. On the 2-core CPU (gdn2, T = 4096, H = 4, K = V = 64) 32 measured
~10% faster than 64 (the per-channel pair hierarchy has one level less per token and the
intra-chunk matmuls are half as long, for twice as many state steps); 16 and 128 were slower."""
SUB_CHUNK = 1
"""Leaf size for per-channel decay: pairs inside a leaf use exact pairwise factors, pairs across
leaves factor through a binary hierarchy (see :class:`_ChannelDecay`). 1 (no pairwise factors at
all) measured fastest on the CPU for C = 64, then 2, 4, 8."""
BLOCK_TOKENS = 1024
"""Token-heads per thread whose intra-chunk terms are formed together; bounds the working memory
(a block is ``BLOCK_TOKENS · min(threads, 8)`` token-heads, independent of T). 1024 per thread
measured fastest on the 2-core CPU with C = 32 (smaller blocks pay more per-op overhead, larger
ones fall out of cache): with 2 threads ~27 ms vs ~29 ms at 2048 and ~33 ms at 4096."""


# Segment sums of g: the only way decay factors are formed.


def _segsum(x: Tensor) -> Tensor:
    """``out[..., r, s, :] = Σ_{s<l≤r} x[..., l, :]`` for ``s ≤ r``, ``−inf`` above the diagonal.

    x: ``[..., L, D]`` -> ``[..., L, L, D]``. Built as a masked cumulative sum over r, so no two
    cumulative sums are subtracted and ``−inf`` entries of x never produce NaN.
    """
    L = x.shape[-2]
    ones = torch.ones(L, L, dtype=torch.bool, device=x.device)
    strict = ones.tril(-1)[:, :, None]
    incl = ones.tril()[:, :, None]
    rows = torch.where(strict, x[..., :, None, :], 0.0)  # [..., r, s, D]: x_r where s < r
    return torch.where(incl, rows.cumsum(-3), float("-inf"))


G_FLOOR = -1.0e4
"""Log-decays below this are raised to it where segment sums are formed by a matmul: any segment
that holds one then sums to ≤ −1e4, whose exp is 0 in every float type, exactly as it would be
unclamped; segments without one are untouched. The clamp keeps −inf out of ``0 · g`` products."""


def _members(rule, L: int, like: Tensor) -> Tensor:
    """0/1 matrix ``[r, l]``: ``rule(r, l)`` on index grids of size L (one segment per row r)."""
    idx = torch.arange(L, device=like.device)
    return rule(idx[:, None], idx[None, :]).to(like.dtype)


def _pair_members(rule, L: int, like: Tensor) -> Tensor:
    """0/1 matrix ``[(r, s), l]``: ``rule(r, s, l)`` on index grids of size L (a segment per pair)."""
    idx = torch.arange(L, device=like.device)
    r, s, l = idx[:, None, None], idx[None, :, None], idx[None, None, :]
    return rule(r, s, l).to(like.dtype).reshape(L * L, L)


def _segment_exp(segments: Tensor, x_floored: Tensor) -> Tensor:
    """``exp(segments @ x)``: exp of segment sums of log-decays already clamped to ``G_FLOOR``.

    segments: ``[S, L]`` 0/1; x_floored: ``[..., L, D]`` -> ``[..., S, D]``. Every segment sum is
    ≤ 0, so every factor is ≤ 1.
    """
    return (segments @ x_floored).exp()


def _rev_excl_cumsum(x: Tensor, dim: int) -> Tensor:
    """``out[s] = Σ_{l>s} x[l]`` along ``dim`` (0 at the last position), without subtraction."""
    L = x.shape[dim]
    rev = x.flip(dim).cumsum(dim).flip(dim)  # Σ_{l≥s}
    return torch.cat([rev.narrow(dim, 1, L - 1), torch.zeros_like(rev.narrow(dim, 0, 1))], dim)


# Decay plans: one per gate form. Each gives, for one block of chunks (leading dims ``...`` =
# [rows, chunks, H, G]):
#   rows(x)    γ_r ⊙ x_r                      [..., C, D] -> [..., C, D]
#   tails(k)   (γ_C/γ_s) ⊙ k_s                [..., C, K] -> [..., C, K]
#   pairs(xs, k)  for each x: tril([x_rᵀ Diag(γ_r/γ_s) k_s]_{r,s})  [..., C, K] -> [..., C, C]
#                 (diagonal included; the buffered per-channel path forms it for xs[0] only and
#                 leaves 0 for the rest: only T = the second x is paired without it, and T's
#                 diagonal is never read); the k side is shared by the xs
#   last       γ_C, [..., 1] or [..., K], or None for no decay
# pairs() is called first; rows() is asked only for the xs given to it and tails() for its k
# (the per-channel plan forms those three along with the pairs).


class _NoDecay:
    last = None

    def rows(self, x: Tensor) -> Tensor:
        return x

    def tails(self, k: Tensor) -> Tensor:
        return k

    def pairs(self, xs: list[Tensor], k: Tensor) -> list[Tensor]:
        return [(x @ k.mT).tril() for x in xs]


class _HeadDecay:
    """One log-decay per token and value head: the pairwise factor is a scalar per (r, s)."""

    def __init__(self, g: Tensor) -> None:  # g: [..., C]
        G = g.cumsum(-1)
        self.gamma = G.exp()[..., None]  # [..., C, 1]
        self.tail = _rev_excl_cumsum(g, -1).exp()[..., None]  # [..., C, 1]
        self.last = G[..., -1:].exp()  # [..., 1]
        self.decay = _segsum(g[..., None]).squeeze(-1).exp()  # [..., C, C], 0 above the diagonal

    def rows(self, x: Tensor) -> Tensor:
        return x * self.gamma

    def tails(self, k: Tensor) -> Tensor:
        return k * self.tail

    def pairs(self, xs: list[Tensor], k: Tensor) -> list[Tensor]:
        return [(x @ k.mT) * self.decay for x in xs]


class _ChannelDecay:
    """One log-decay per token, value head and key channel: a binary hierarchy over the chunk.

    The chunk is cut into leaves of c tokens, padded (a = exp(g) = 1, x = k = 0 at the end) to
    ``c · 2^L`` tokens. Level h = c, 2c, … splits each aligned segment of 2h tokens into halves;
    a pair (r, s) with r in the second half and s in the first factors through the split point,
    each factor a product of per-token decays ``a_l = exp(g_l) ≤ 1``:

        γ_r/γ_s = Π_{mid ≤ l ≤ r} a_l · Π_{s < l < mid} a_l = P_h[r] · Q_h[s]

    with P_h the inclusive prefix product and Q_h the exclusive suffix product within each
    h-segment, so each level is one batched matmul ``(x ⊙ P_h)(k ⊙ Q_h)ᵀ`` of its [h, h] blocks.
    ``x ⊙ P`` and ``k ⊙ Q`` are carried themselves: from one level to the next the second half's
    x side and the first half's k side are multiplied by the other half's total product (itself
    a product of the two totals below it). Nothing is divided, nothing subtracted. Pairs inside
    a leaf use the exact pairwise factor ``[c, c, K]`` (exp of segment sums); c = 1 needs none.
    After the last level ``x ⊙ P = γ ⊙ x`` (rows), ``k ⊙ Q = (γ_C/γ) ⊙ k`` (tails) and the total
    is γ_C, so they come with the pairs.
    """

    def __init__(self, g: Tensor, sub: int, work: dict | None = None) -> None:  # g: [..., C, K]
        self.g, self.c, self.work = g, math.gcd(g.shape[-2], sub), work

    def pairs(self, xs: list[Tensor], k: Tensor) -> list[Tensor]:
        g, c, given = self.g, self.c, xs
        C = g.shape[-2]
        if (self.work is not None and c == 1 and C >= 2 and C & (C - 1) == 0
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in (g, k, *xs)))):
            shape = _broadcast_shape(g.shape, k.shape, *(x.shape for x in xs))
            key = ("pairs", shape, len(xs), g.dtype, g.device)
            if key not in self.work:
                self.work[key] = _PairWork(shape, len(xs), g)
            out, self._rows, self._tail, self.last = self.work[key].run(g, xs, k)
            return out
        Cp = c << max(0, math.ceil(math.log2(C // c)))  # c · 2^L ≥ C
        n, m = Cp // c, len(xs)
        shape = _broadcast_shape(g.shape, *(x.shape for x in xs))
        if Cp > C:
            g, k = F.pad(g, (0, 0, 0, Cp - C)), F.pad(k, (0, 0, 0, Cp - C))
            xs = [F.pad(x, (0, 0, 0, Cp - C)) for x in xs]
            shape = (*shape[:-2], Cp, shape[-1])
        # No autograd: the running products are extended in place; else out of place.
        inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (g, k, *xs)))
        # All pairs land in one matrix [..., Cp (r), m, Cp (s)], block by block (the rest is 0).
        out = k.new_zeros(*shape[:-1], m, Cp)
        # Running products, kept as the products with x and k themselves:
        #   xp = x ⊙ P_h  (prefix within the h-segment, xs side by side: [..., Cp, m, K]),
        #   kq = k ⊙ Q_h  (exclusive suffix within the h-segment),  tot = Π over each h-segment.
        if c == 1:
            a = g.exp()
            tot = a
            xp = torch.stack([(x * a).expand(shape) for x in xs], dim=-2)
            kq = k.expand(shape)
            diag = torch.stack([(x * k).sum(-1).expand(shape[:-1]) for x in xs], dim=-2)  # [..., m, Cp]
            out.diagonal(dim1=-3, dim2=-1).copy_(diag)
        else:  # leaves of c tokens: exact pairwise factors
            gf = g.clamp(min=G_FLOOR).unflatten(-2, (n, c))  # [..., n, c, K]
            local = _segment_exp(_cached_members("leaf_ends", c, g), gf)  # [..., n, 2c, K]
            P, Q = local[..., :c, :].flatten(-3, -2), local[..., c:, :].flatten(-3, -2)
            tot = local[..., c - 1, :]  # [..., n, K]
            x = torch.stack([x.expand(shape) for x in xs], dim=-2)  # [..., Cp, m, K]
            xp, kq = x * P[..., None, :], (k * Q).expand(shape)
            f = _segment_exp(_cached_members("leaf_pairs", c, g), gf).unflatten(-2, (c, c))
            dk = f * k.unflatten(-2, (n, c))[..., None, :, :]  # [..., n, c_r, c_s, K]
            xl = x.unflatten(-3, (n, c))  # [..., n, c_r, m, K]
            d = (xl[..., :, :, None, :] * dk[..., :, None, :, :]).sum(-1)  # [..., n, c_r, m, c_s]
            d = torch.where(_cached_members("leaf_lower", c, g).bool()[:, None, :], d, 0.0)
            leaf = out.unflatten(-1, (n, c)).unflatten(-4, (n, c)).diagonal(dim1=-5, dim2=-2)
            leaf.copy_(d.movedim(-4, -1))  # [..., c_r, m, c_s, n]
        if inplace:
            kq = kq.clone()  # k itself is not ours to change
        h = c
        while h < Cp:
            n2 = Cp // (2 * h)
            xpv = xp.unflatten(-3, (n2, 2, h))  # [..., n2, 2, h, m, K]
            kqv = kq.unflatten(-2, (n2, 2, h))  # [..., n2, 2, h, K]
            xh, kh = xpv[..., 1, :, :, :], kqv[..., 0, :, :]
            if h <= 2:  # tiny blocks: products and sums beat a bmm
                blk = (xh[..., None, :] * kh[..., None, None, :, :]).sum(-1)
            else:
                blk = (xh.flatten(-3, -2) @ kh.mT).unflatten(-2, (h, m))  # [..., n2, h, m, h]
            ov = out.unflatten(-1, (n2, 2, h)).unflatten(-5, (n2, 2, h)).diagonal(dim1=-7, dim2=-3)
            ov[..., 1, :, :, 0, :, :].copy_(blk.movedim(-4, -1))  # [..., h, m, h, n2]
            # extend the products over the neighbouring half: its total product (≤ 1)
            totv = tot.unflatten(-2, (n2, 2))  # [..., n2, 2, K]
            t_even, t_odd = totv[..., 0:1, :], totv[..., 1:2, :]
            if inplace:
                xpv[..., 1, :, :, :].mul_(t_even[..., None, :])
                kqv[..., 0, :, :].mul_(t_odd)
            else:
                xp = torch.stack([xpv[..., 0, :, :, :], xpv[..., 1, :, :, :] * t_even[..., None, :]], -4)
                xp = xp.flatten(-5, -3)
                kq = torch.stack([kqv[..., 0, :, :] * t_odd, kqv[..., 1, :, :]], -3).flatten(-4, -2)
            tot = totv[..., 0, :] * totv[..., 1, :]
            h *= 2
        # now xp = x ⊙ γ, kq = k ⊙ γ_C/γ, tot = γ_C
        self._rows = {id(x): xp[..., :C, i, :] for i, x in enumerate(given)}
        self._tail = kq[..., :C, :]
        self.last = tot[..., 0, :]
        return list(out[..., :C, :, :C].unbind(-2))

    def rows(self, x: Tensor) -> Tensor:
        return self._rows[id(x)]  # γ ⊙ x, formed by pairs() for each of its xs

    def tails(self, k: Tensor) -> Tensor:
        return self._tail  # (γ_C/γ) ⊙ k, formed by pairs()


LOG2E = math.log2(math.e)


class _PairWork:
    """The per-channel pair hierarchy of :class:`_ChannelDecay` for leaves of one token and a
    power-of-two C, without autograd, in buffers reused by every block of one shape.

    The same hierarchy as the general path (values agree up to rounding: exp(g) is taken as
    exp2), but each op writes into a preallocated buffer through views built once here: at
    C = 32 a block then costs ~35 tensor ops instead of ~175, and with ~2k token-heads per block
    the per-op dispatch (view ops included) was the larger part of the hierarchy's time. The
    diagonal is formed for ``xs[0]`` only (see the plans' contract above). The pair matrix is
    zeroed once: every block writes exactly the same entries (the first x's diagonal and each
    level's blocks), the rest stay 0.
    Outputs are views of the buffers, valid until the next block runs (the caller is done with
    a block's terms before it forms the next block's).
    """

    def __init__(self, shape: tuple[int, ...], m: int, like: Tensor) -> None:
        *lead, C, K = shape
        N = math.prod(lead)
        self.shape, self.lead, self.m = shape, tuple(lead), m
        new = lambda *size: like.new_empty(*size)  # noqa: E731
        self.a = new(N, C, K)  # a = exp(g): the first level's totals
        self.xp = new(N, C, m, K)  # x ⊙ P_h for each x
        self.kq = new(N, C, K)  # k ⊙ Q_h
        self.out = like.new_zeros(N, C, m, C)  # pairs [r, x, s]
        self.diag = self.out.diagonal(dim1=1, dim2=3).permute(1, 0, 2)  # [x, n, r]: (r, r)
        # x_r ⊙ k_r and its sums, for the first x only (T's diagonal is never read: the other
        # xs keep 0 there), dense (a strided output costs ~2x here)
        self.diag = self.diag[0]
        self.prod, self.dsum = new(N, C, K), new(N, C)
        self.levels = []
        tot, h = self.a, 1
        while h < C:
            n2 = C // (2 * h)
            xv = self.xp.view(N * n2, 2, h * m, K)
            kv = self.kq.view(N * n2, 2, h, K)
            tv = tot.view(N * n2, 2, 1, K)
            nxt = new(N, n2, K)
            # this level's [h·m, h] blocks of the pair matrix, one per segment: rows of the
            # second half (r, x), columns of the first half
            dst = self.out.view(N, n2, 2, h * m, n2, 2, h).diagonal(dim1=1, dim2=4)[:, 1, :, 0]
            blk = new(N * n2, h * m, h)
            if h == 1:  # 1x1 blocks: products and sums beat a bmm (2x2 ones no longer do)
                prod = new(N * n2, h * m, h, K)
                mm = (xv[:, 1, :, None, :], kv[:, 0, None, :, :], prod)
            else:
                prod, mm = None, (xv[:, 1], kv[:, 0].mT, blk)
            self.levels.append(dict(
                mm=mm, prod=prod, blk=blk, dst=dst, src=blk.view(N, n2, h * m, h).permute(0, 2, 3, 1),
                xh=xv[:, 1], kh=kv[:, 0], t_even=tv[:, 0], t_odd=tv[:, 1], tot=(tv[:, 0, 0], tv[:, 1, 0]),
                nxt=nxt.view(N * n2, K)))
            tot, h = nxt, 2 * h
        self.last = tot  # [N, 1, K] = γ_C

    def run(self, g: Tensor, xs: list[Tensor], k: Tensor) -> tuple:
        shape, m = self.shape, self.m
        # exp(g) as 2^(g·log2 e): ~3x faster than torch.exp on the CPU (one more rounding of the
        # argument, relative error ~1e-7 in float32); −inf still gives 0
        a = self.a.view(shape)
        torch.mul(g.expand(shape), LOG2E, out=a).exp2_()
        kq = self.kq.view(shape)
        kq.copy_(k)
        xp = self.xp.view(*shape[:-1], m, shape[-1])
        torch.mul(xs[0], kq, out=self.prod.view(shape))
        for i, x in enumerate(xs):
            torch.mul(x, a, out=xp[..., i, :])
        torch.sum(self.prod, -1, out=self.dsum)
        self.diag.copy_(self.dsum)
        for lv in self.levels:
            x_, k_, o_ = lv["mm"]
            if lv["prod"] is None:
                torch.bmm(x_, k_, out=o_)
            else:
                torch.mul(x_, k_, out=lv["prod"])
                torch.sum(lv["prod"], -1, out=lv["blk"])
            lv["dst"].copy_(lv["src"])
            # extend the products over the neighbouring half by its total (≤ 1)
            lv["xh"].mul_(lv["t_even"])
            lv["kh"].mul_(lv["t_odd"])
            torch.mul(*lv["tot"], out=lv["nxt"])
        out = self.out.view(*self.lead, shape[-2], m, shape[-2])
        rows = {id(x): xp[..., i, :] for i, x in enumerate(xs)}
        return list(out.unbind(-2)), rows, kq, self.last.view(*self.lead, shape[-1])


def _broadcast_shape(*shapes: torch.Size) -> tuple[int, ...]:
    """``torch.broadcast_shapes`` for shapes of one rank, in plain Python (that one costs ~0.3 ms)."""
    return tuple(max(sizes) for sizes in zip(*shapes))


_MEMBERS: dict = {}


def _cached_members(kind: str, c: int, like: Tensor) -> Tensor:
    """0/1 matrices of a leaf of c tokens, built once per (kind, c, dtype, device)."""
    key = (kind, c, like.dtype, like.device)
    if key not in _MEMBERS:
        if kind == "leaf_ends":  # [Σ_{start ≤ l ≤ r}; Σ_{s < l ≤ end}]
            m = torch.cat([_members(lambda r, l: l <= r, c, like), _members(lambda s, l: l > s, c, like)])
        elif kind == "leaf_pairs":  # Σ_{s < l ≤ r} for each (r, s)
            m = _pair_members(lambda r, s, l: (s < l) & (l <= r), c, like)
        elif kind == "eye":
            m = torch.eye(c, dtype=like.dtype, device=like.device)
        else:  # "leaf_lower": s ≤ r
            m = _members(lambda r, s: s <= r, c, like)
        _MEMBERS[key] = m
    return _MEMBERS[key]


def _decay_plan(g: Tensor | None, q: Tensor, sub: int, work: dict | None = None
                ) -> _NoDecay | _HeadDecay | _ChannelDecay:
    if g is None:
        return _NoDecay()
    if g.ndim == q.ndim - 1:
        return _HeadDecay(g)
    return _ChannelDecay(g, sub, work)


def _gate(x: Tensor, gate: Tensor | None) -> Tensor:
    """``gate ⊙ x`` for a gate per head ``[..., C]`` or per channel ``[..., C, D]``; None is 1."""
    if gate is None:
        return x
    return x * (gate[..., None] if gate.ndim == x.ndim - 1 else gate)


def _dense_gate(x: Tensor, gate: Tensor | None, work: dict | None = None, name: str = "") -> Tensor:
    """:func:`_gate` written into a dense tensor: the product of two chunk views keeps their
    strided order, which a matmul would copy again. With ``work``, into a buffer kept there under
    ``name`` for every block of that shape (see :func:`_bmm3`): a fresh half-MiB tensor per block
    costs its page faults again, more than the product itself."""
    if gate is None or (torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad)):
        return _gate(x, gate)
    gate = gate[..., None] if gate.ndim == x.ndim - 1 else gate
    return torch.mul(x, gate, out=_work_buffer(work, name, _broadcast_shape(x.shape, gate.shape), x))


def _work_buffer(work: dict | None, name: str, shape: tuple[int, ...], like: Tensor, zeroed: bool = False
                 ) -> Tensor:
    """An uninitialised (``zeroed``: zero when made) tensor of ``shape``: kept in ``work`` under
    ``name`` for every block of that shape (the blocks run one after another, each done with its
    terms before the next one writes them), or a fresh one without ``work``."""
    make = like.new_zeros if zeroed else like.new_empty
    if work is None:
        return make(shape)
    key = (name, shape, like.dtype, like.device)
    if key not in work:
        work[key] = make(shape)
    return work[key]


# Stage 2: intra-chunk terms.


@dataclass
class _Intra:
    """Per-chunk terms of one block. Leading dims ``[rows, chunks, H, G or 1]``."""

    q_gamma: Tensor  # Q_γ (q not scaled)    [..., C, K]
    m: Tensor  # M = tril(Q ⊛ K)             [..., C, C]
    w: Tensor | None  # W = A Ē              [..., C, K]; None without erase
    r: Tensor  # R = A Z (Z without erase)   [..., C, V]
    kt: Tensor  # K̃ᵀ                        [..., K, C]
    last: Tensor | None  # γ_C, [..., 1] or [..., K]; None = no decay
    psi: Tensor | None = None  # K̃ᵀ Z without erase (the update does not depend on S₀)
    owned: bool = False  # no autograd, w and r are this call's: the carry may overwrite r with U


def _intra(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, b: Tensor | None, w: Tensor | None,
           sub: int, work: dict | None = None) -> _Intra:
    """Intra-chunk terms for a block of chunks.

    Args:
        q, k: ``[R, n, H, 1, C, K]`` (q not scaled). v: ``[R, n, H, G, C, V]``.
        g: None, ``[R, n, H, G, C]`` or ``[R, n, H, G, C, K]``. b: None or per head / per K channel.
        w: None or per head / per V channel.
    """
    decay = _decay_plan(g, q, sub, work)
    z = _dense_gate(v, w, work, "z") if b is not None else _gate(v, w)
    if b is None:
        # No erase: U = Z, the state only decays and accumulates.
        (m,) = decay.pairs([q], k)
        kt = decay.tails(k).mT
        return _Intra(decay.rows(q), m, None, z, kt, decay.last, kt @ z)
    e = _dense_gate(k, b, work, "e")
    m, t = decay.pairs([q, e], k)
    e_bar = decay.rows(e)
    z = z.expand(*e_bar.shape[:-1], z.shape[-1])
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (t, e_bar, z))):
        # Without autograd: (I + T)⁻¹ itself (the same substitution on the identity: C columns
        # instead of K + V), then W and R as one matmul each. No [Ē | Z] copy is made, and the
        # two [C, C] x [C, ·] products run faster than the substitution's smaller ones.
        inv = _wy_inverse(t, work)
        w_, r_ = _bmm3(inv, e_bar, work, "w"), _bmm3(inv, z, work, "r")
        return _Intra(decay.rows(q), m, w_, r_, decay.tails(k).mT, decay.last, owned=True)
    K = k.shape[-1]
    rhs = torch.cat([e_bar, z], dim=-1)
    wr = _wy_solve(t, rhs)  # [W | R] = (I + T)⁻¹ [Ē | Z]
    return _Intra(decay.rows(q), m, wr[..., :K], wr[..., K:], decay.tails(k).mT, decay.last)


def _bmm3(a: Tensor, b: Tensor, work: dict | None = None, name: str = "") -> Tensor:
    """``a @ b`` for ``a`` ``[..., C, C]`` (dense) and ``b`` ``[..., C, D]`` (rows may be strided) as
    one 3-D bmm (``matmul`` on the 6-D block layout reshapes a strided ``b`` into a copy first).

    With ``work``, into a buffer kept there under ``name`` for every block of that shape: the
    blocks run one after another, each done with its terms before the next one writes them, and
    reading from the same buffers lets :class:`_StateWork` build its views once per call.
    """
    lead = _broadcast_shape(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*lead, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*lead, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    shape = (*lead, a.shape[-2], b.shape[-1])
    if work is None:
        return torch.bmm(a3, b3).view(shape)
    out = _work_buffer(work, name, shape, a)
    torch.bmm(a3, b3, out=out.view(a3.shape[0], *shape[-2:]))
    return out


LEAF = 16
"""Leaf size of :func:`_wy_solve`: diagonal blocks this large are inverted by one batched
triangular solve; the rest is block forward substitution with matmuls."""


def _wy_solve(t: Tensor, rhs: Tensor) -> Tensor:
    """``(I + strict_tril(t))⁻¹ rhs`` for ``t`` ``[..., C, C]`` (only its strict lower triangle is
    read) and ``rhs`` ``[..., C, D]`` with the same leading dims.

    MKL's batched triangular solve on 64×64 blocks with 128 right-hand sides runs at a fraction
    of matmul speed, so only the diagonal leaves of ``c = gcd(C, LEAF)`` tokens go through it
    (inverted against the identity, all leaves at once); then block forward substitution over the
    ``n = C / c`` leaf rows, ``X_i = A_ii (B_i − T_{i,<i} X_{<i})``, is ``2n − 1`` matmuls that
    skip the zero upper triangle. Same operations as forward substitution, so the same rounding.
    """
    C, D = t.shape[-1], rhs.shape[-1]
    c = math.gcd(C, LEAF)
    n = C // c
    lead = rhs.shape[:-2]
    eye = torch.eye(c, dtype=t.dtype, device=t.device)
    if n == 1:
        return torch.linalg.solve_triangular(t, rhs, upper=False, unitriangular=True)
    leaves = t.unflatten(-1, (n, c)).unflatten(-3, (n, c)).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)
    a = torch.linalg.solve_triangular(leaves, eye, upper=False, unitriangular=True)  # [..., n, c, c]
    a = a.reshape(-1, n, c, c)
    t3, b3 = t.reshape(-1, C, C), rhs.reshape(-1, C, D)
    # Without autograd the leaf rows are written into one buffer and read back as views; with it,
    # each row of X is its own tensor (a buffer written after being read breaks the backward).
    inplace = not (torch.is_grad_enabled() and (t.requires_grad or rhs.requires_grad))
    x = torch.empty_like(b3) if inplace else None
    rows: list[Tensor] = []
    for i in range(n):
        r0, r1 = i * c, (i + 1) * c
        y = b3[:, r0:r1]
        if i:
            if inplace:
                y = torch.baddbmm(y, t3[:, r0:r1, :r0], x[:, :r0], alpha=-1)
            else:
                for l_, xl in enumerate(rows):
                    y = torch.baddbmm(y, t3[:, r0:r1, l_ * c : (l_ + 1) * c], xl, alpha=-1)
        xi = a[:, i] @ y
        if inplace:
            x[:, r0:r1] = xi
        else:
            rows.append(xi)
    x = x if inplace else torch.cat(rows, dim=1)
    return x.view(*lead, C, D)


def _wy_inverse(t: Tensor, work: dict | None = None) -> Tensor:
    """``(I + strict_tril(t))⁻¹`` for ``t`` ``[..., C, C]`` (only its strict lower triangle is read).

    Block lower triangular over leaves of ``c = gcd(C, LEAF)`` tokens: the diagonal blocks are
    the leaf inverses (one batched triangular solve, as in :func:`_wy_solve`); below them, leaf
    row by leaf row, ``A_{i,<i} = −A_ii T_{i,<i} A_{<i,<i}`` (two matmuls per leaf row).
    With ``work``, into a buffer kept there (zeroed once: every call writes the same entries,
    those above the leaf diagonal blocks stay 0).
    """
    C = t.shape[-1]
    c = math.gcd(C, LEAF)
    n = C // c
    eye = _cached_members("eye", c, t)
    # X L = I (left=False) rather than L X = I: the same inverse, ~20% faster here on strided
    # leaves (torch's copies for the solve suit it better)
    solve = dict(upper=False, unitriangular=True, left=False)
    if n == 1:
        return torch.linalg.solve_triangular(t, eye.expand(t.shape), **solve)
    leaves = t.unflatten(-1, (n, c)).unflatten(-3, (n, c)).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)
    a = torch.linalg.solve_triangular(leaves, eye, **solve)  # [..., n, c, c]
    a = a.reshape(-1, n, c, c)
    t3 = t.reshape(-1, C, C)
    inv = _work_buffer(work, "inv", tuple(t3.shape), t, zeroed=True)
    inv.view(-1, n, c, n, c).diagonal(dim1=1, dim2=3).copy_(a.permute(0, 2, 3, 1))
    for i in range(1, n):
        r0, r1 = i * c, (i + 1) * c
        y = torch.bmm(t3[:, r0:r1, :r0], inv[:, :r0, :r0])
        inv[:, r0:r1, :r0] = torch.baddbmm(y, a[:, i], y, beta=0, alpha=-1)
    return inv.view(t.shape)


def _flat(x: Tensor, lead: tuple[int, int, int]) -> Tensor:
    """``[R, n, H, G or 1, a, b]`` -> ``[n · R·H·G, a, b]``: chunk-major, one matrix per chunk and
    (row, value head). A view for one row and full G; else one copy."""
    R, H, G = lead
    x = x.expand(R, x.shape[1], H, G, *x.shape[-2:])
    return x.transpose(0, 1).reshape(-1, *x.shape[-2:])


class _StateWork:
    """Stages 3 and 4 of one block without autograd (erase and decay present), on per-chunk views
    built once.

    Every full block of a call finds its terms in the same buffers (those of :class:`_PairWork`
    and :func:`_buffer`), so the views below (~6 per chunk) and the state and output buffers are
    made once per call and reused (:meth:`get`), not rebuilt per block: with ~2k token-heads per
    block that bookkeeping cost a quarter of the state loop. Terms not in reused buffers (other
    gate forms, several rows, GVA copies) only lose the reuse.
    """

    def __init__(self, it: _Intra, s: Tensor, lead: tuple[int, int, int]) -> None:
        n = it.r.shape[1]
        terms = (it.w, it.r, it.kt, it.last[..., None], it.q_gamma, it.m)
        flats = [_flat(x, lead) for x in terms]
        self.w, r, self.kt, last, self.q, self.m = flats
        # U overwrites R in place where R is ours (a view of an owned R, or _flat's copy)
        self.u = r if it.owned or r.data_ptr() != it.r.data_ptr() else r.clone()
        self.states = s.new_empty(n + 1, *s.shape)  # states[i]: before chunk i
        self.s0 = self.states[:n].flatten(0, 1)
        self.o = self.u.new_empty(self.u.shape[0], self.q.shape[1], self.u.shape[2])
        per_chunk = lambda x: x.unflatten(0, (n, -1)).unbind(0)  # noqa: E731
        self.steps = list(zip(per_chunk(self.w), per_chunk(self.u), per_chunk(self.kt), per_chunk(last),
                              self.states[:n].unbind(0), self.states[1:].unbind(0)))
        # reusable only if every term above is a view of the block's own tensors
        reusable = all(f.data_ptr() == x.data_ptr() for f, x in zip(flats, terms))
        self.key = _StateWork._key(it, s) if reusable else None

    @staticmethod
    def _key(it: _Intra, s: Tensor) -> tuple:
        terms = (it.w, it.r, it.kt, it.last, it.q_gamma, it.m)
        return (tuple((x.data_ptr(), x.shape, x.stride()) for x in terms), s.shape, s.dtype)

    @staticmethod
    def get(it: _Intra, s: Tensor, lead: tuple[int, int, int], work: dict | None) -> _StateWork:
        """The cached one if this block's terms live where the last block's did, else a new one."""
        cached = None if work is None else work.get("state")
        if cached is not None and cached.key == _StateWork._key(it, s):
            return cached
        sw = _StateWork(it, s, lead)
        if work is not None and sw.key is not None:
            work["state"] = sw
        return sw

    def run(self, s: Tensor, j0: int, lay: _Layout, reset, scale: float) -> tuple:
        """The state loop and the block's outputs.

        Returns (O = scale · (Q_γ S₀ + M U) ``[n·R·H·G, C, V]``, last state, ``{chunk: state after
        it}`` where a packed sequence ends); O and the last state are views of the buffers, valid
        until the next block runs.
        """
        varlen = lay.token is not None
        ends = {}
        self.states[0].copy_(s)
        for i, (w, u, kt, last, s_i, nxt) in enumerate(self.steps):
            if varlen and j0 + i in lay.starts:
                s_i.copy_(reset(j0 + i))
            u.baddbmm_(w, s_i, alpha=-1)  # U = R − W S₀
            torch.mul(s_i, last, out=nxt).baddbmm_(kt, u)  # S_C = Diag(γ_C) S₀ + K̃ᵀ U
            if varlen and j0 + i in lay.ends:
                ends[j0 + i] = nxt.clone()  # the buffer row may be overwritten by a reset
        # beta = 0: the buffer's old contents are ignored
        self.o.baddbmm_(self.q, self.s0, beta=0, alpha=scale).baddbmm_(self.m, self.u, alpha=scale)
        return self.o, self.states[-1], ends


def _carry(it: _Intra, s: Tensor, lead: tuple[int, int, int], j0: int, lay: _Layout, reset) -> tuple:
    """Stage 3: carry the state ``s`` ``[R·H·G, K, V]`` through the block's chunks.

    Per chunk: ``U = R − W S₀`` and ``S_C = Diag(γ_C) S₀ + K̃ᵀ U`` (one multiply and two fused
    multiply-adds on dense slices). ``reset(j)`` gives the state where a packed sequence starts.

    Returns (states before each chunk ``[n·R·H·G, K, V]``, U ``[n·R·H·G, C, V]``, last state,
    ``{chunk: state after it}`` for the chunks where a packed sequence ends).
    """
    n = it.r.shape[1]
    rs = _flat(it.r, lead).unflatten(0, (n, -1)).unbind(0)
    lasts = None
    if it.last is not None:
        lasts = _flat(it.last[..., None], lead).unflatten(0, (n, -1)).unbind(0)
    if it.w is None:
        psis = _flat(it.psi, lead).unflatten(0, (n, -1)).unbind(0)
    else:
        ws = _flat(it.w, lead).unflatten(0, (n, -1)).unbind(0)
        kts = _flat(it.kt, lead).unflatten(0, (n, -1)).unbind(0)
    before, us, ends = [], [], {}
    for i in range(n):
        j = j0 + i
        if j in lay.starts:
            s = reset(j)
        before.append(s)
        if it.w is None:
            nxt = psis[i] + (s if lasts is None else s * lasts[i])
        else:
            u = torch.baddbmm(rs[i], ws[i], s, alpha=-1)
            us.append(u)
            # the decayed state is a fresh tensor: the update accumulates into it
            nxt = torch.baddbmm(s, kts[i], u) if lasts is None else (s * lasts[i]).baddbmm_(kts[i], u)
        s = nxt
        if j in lay.ends:
            ends[j] = s
    u = _flat(it.r, lead) if it.w is None else torch.stack(us).flatten(0, 1)
    return torch.stack(before).flatten(0, 1), u, s, ends


# Stages 1 and 5: layout.


@dataclass
class _Layout:
    """Where each token lives in the chunked layout ``[rows, slots]`` (slots = chunks · C).

    Without ``cu_seqlens`` a row is a batch row, padded at its end to whole chunks. With them,
    row 0 holds the packed sequences one after another, each padded to whole chunks. Padded
    slots get k = 0 and g = 0, so they leave the state untouched.
    """

    rows: int
    T: int
    slots: int
    starts: dict[int, int] = field(default_factory=dict)  # chunk -> packed sequence starting there
    ends: dict[int, int] = field(default_factory=dict)  # chunk -> packed sequence ending there
    empty: list[int] = field(default_factory=list)  # packed sequences without tokens
    token: Tensor | None = None  # [slots] packed token of each slot, T for padding (varlen)

    def take(self, x: Tensor | None, s0: int, s1: int) -> Tensor | None:
        """Slots ``[s0, s1)`` of ``x`` ``[B, T, heads, ...]`` as ``[rows, s1 - s0, heads, ...]``.

        Only one block's slots are copied at a time, so the layout costs no O(T) memory.
        """
        if x is None:
            return None
        if self.token is None:
            piece = x[:, s0 : min(s1, self.T)]
            if piece.shape[1] == s1 - s0:
                return piece  # a view: the chunked layout copies it once
            return F.pad(piece, [0, 0] * (x.ndim - 2) + [0, s1 - s0 - piece.shape[1]])
        token = self.token[s0:s1]
        real = (token < self.T).view(-1, *([1] * (x.ndim - 2)))
        # where, not a product with the mask: g may hold −inf.
        return torch.where(real, x[0, token.clamp(max=self.T - 1)], 0.0)[None]

    def put(self, o: Tensor, piece: Tensor, s0: int, s1: int) -> None:
        """Write slots ``[s0, s1)`` (``piece`` ``[rows, chunks, H, G, C, V]``) into ``o``.

        o: ``[B, T, HV, V]``, or ``[1, T + 1, HV, V]`` with varlen (row T collects the padding).
        """
        if self.token is None and s1 <= self.T:
            # straight from the chunked layout into o's slots (one copy, no reshaped temporary)
            R, n, H, G, C, V = piece.shape
            o[:, s0:s1].view(R, n, C, H, G, V).copy_(piece.permute(0, 1, 4, 2, 3, 5))
            return
        piece = _from_chunks(piece).to(o.dtype)
        if self.token is None:
            end = min(s1, self.T)
            o[:, s0:end] = piece[:, : end - s0]
        else:
            o[0, self.token[s0:s1]] = piece[0]


def _layout(r: Recurrence, C: int) -> _Layout:
    B, T = r.q.shape[:2]
    if r.cu_seqlens is None:
        return _Layout(rows=B, T=T, slots=math.ceil(T / C) * C)
    bounds = r.cu_seqlens.tolist()
    lens = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    n_chunks = [math.ceil(L / C) for L in lens]
    first = [sum(n_chunks[:i]) for i in range(len(lens))]
    lay = _Layout(rows=1, T=T, slots=sum(n_chunks) * C)
    for n, (f, nc) in enumerate(zip(first, n_chunks)):
        if nc == 0:
            lay.empty.append(n)
        else:
            lay.starts[f] = n
            lay.ends[f + nc - 1] = n
    per_seq = torch.tensor(n_chunks) * C
    seq = torch.repeat_interleave(torch.arange(len(lens)), per_seq)
    local = torch.arange(lay.slots) - torch.repeat_interleave(torch.tensor(first) * C, per_seq)
    token = torch.tensor(bounds[:-1])[seq] + local
    lay.token = torch.where(local < torch.tensor(lens)[seq], token, T).to(r.q.device)
    return lay


def _to_chunks(x: Tensor | None, H: int, C: int) -> Tensor | None:
    """``[R, L, heads, ...]`` -> ``[R, L // C, H, heads // H, C, ...]`` (a view).

    Chunks come before heads so that one chunk of every head, as the state loop reads it, is one
    dense slice of each per-chunk term.
    """
    if x is None:
        return None
    R, L, heads = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(R, L // C, C, H, heads // H, *rest)
    return x.permute(0, 1, 3, 4, 2, *range(5, 5 + len(rest)))


def _from_chunks(o: Tensor) -> Tensor:
    """``[R, chunks, H, G, C, V]`` -> ``[R, chunks · C, HV, V]``."""
    R, n, H, G, C, V = o.shape
    return o.permute(0, 1, 4, 2, 3, 5).reshape(R, n * C, H * G, V)




SHORT_T = 8
"""Inputs this short (decode steps, tiny prefills) run token by token: padding one token to a
whole chunk costs ~C× the work, and a decode loop calls this once per generated token."""


def _stepwise(r: Recurrence) -> tuple[Tensor, Tensor | None]:
    """The recurrence token by token, batched over rows and heads (no chunk padding).

    Same math as :func:`gatedelta.ops.reference.recurrence` (decay, erase, write, read), laid out
    as ``[B, H, G, ...]`` so the q/k heads broadcast over their value-head group.
    """
    B, T, H, K = r.q.shape
    HV, V = r.v.shape[2:]
    G, dt = HV // H, r.state_dtype
    q = r.q.to(dt).view(B, T, H, 1, K) * r.scale
    k = r.k.to(dt).view(B, T, H, 1, K)
    v = r.v.to(dt).view(B, T, H, G, V)
    # gates as [B, T, H, G, ...] with trailing dims that broadcast against [K, V] / [K] / [V]
    g = None if r.g is None else r.g.to(dt).view(B, T, H, G, -1, 1)
    b = None if r.b is None else r.b.to(dt).view(B, T, H, G, -1)
    w = None if r.w is None else r.w.to(dt).view(B, T, H, G, -1)
    if r.initial_state is None:
        s = torch.zeros(B, H, G, K, V, dtype=dt, device=r.v.device)
    else:
        s = r.initial_state.to(dt).view(B, H, G, K, V)
    outs = []
    for t in range(T):
        k_t = k[:, t]  # [B, H, 1, K]
        if g is not None:
            s = s * torch.exp(g[:, t])
        if b is not None:
            e_t = b[:, t] * k_t  # [B, H, G, K]
            s = s - k_t[..., None] * torch.einsum("bhgk,bhgkv->bhgv", e_t, s)[..., None, :]
        z_t = v[:, t] if w is None else w[:, t] * v[:, t]
        s = s + k_t[..., None] * z_t[..., None, :]
        outs.append(torch.einsum("bhgk,bhgkv->bhgv", q[:, t].expand(B, H, G, K), s))
    o = torch.stack(outs, dim=1).reshape(B, T, HV, V).to(r.v.dtype)
    return o, (s.reshape(B, HV, K, V) if r.output_final_state else None)


def recurrence(
    r: Recurrence, chunk_size: int = CHUNK, sub_chunk: int = SUB_CHUNK, short_t: int = SHORT_T
) -> tuple[Tensor, Tensor | None]:
    """Run the general recurrence chunkwise on normalised inputs (see :mod:`gatedelta.ops.spec`).

    Args:
        r: validated inputs; gate forms are read from the ranks of ``r.g``, ``r.b``, ``r.w``.
        chunk_size: tokens per chunk C (any positive int; T need not be a multiple).
        sub_chunk: per-channel decay splits each chunk into sub-chunks of ``gcd(C, sub_chunk)``
            tokens.
        short_t: inputs of at most this many tokens (and no ``cu_seqlens``) run token by token.

    Returns:
        ``o`` ``[B, T, HV, V]`` in ``v``'s dtype and, if ``r.output_final_state``, the final state
        ``[N, HV, K, V]`` in the state dtype (float32, or float64 for float64 inputs); else None.
    """
    if not (isinstance(chunk_size, int) and chunk_size > 0 and isinstance(sub_chunk, int) and sub_chunk > 0):
        raise ValueError(f"chunk_size and sub_chunk must be positive ints, got {chunk_size!r}, {sub_chunk!r}")
    B, T, H, K = r.q.shape
    if T <= short_t and r.cu_seqlens is None:
        return _stepwise(r)
    HV, V = r.v.shape[2:]
    G, C, N = HV // H, chunk_size, r.num_sequences
    dt = r.state_dtype
    dev = r.q.device
    sub = math.gcd(C, sub_chunk)

    lay = _layout(r, C)
    # states as [rows · H · G, K, V]
    init = None if r.initial_state is None else r.initial_state.to(dt).view(N, H * G, K, V)
    zero = torch.zeros(H * G, K, V, dtype=dt, device=dev)
    if lay.token is None:
        s = init.flatten(0, 1) if init is not None else zero.repeat(B, 1, 1)
    else:
        s = zero

    def reset(j: int) -> Tensor:  # the state where packed sequence lay.starts[j] starts
        return zero if init is None else init[lay.starts[j]]

    lead = (lay.rows, H, G)
    finals: list[Tensor | None] = [None] * N
    # With varlen, padded slots write to an extra row T that is dropped at the end.
    # (every slot of o is written below; only the varlen padding row needs no value)
    o = torch.empty(B, T + (lay.token is not None), HV, V, dtype=r.v.dtype, device=dev)

    work: dict = {}  # buffers reused by every block of one shape (see _PairWork, _StateWork)
    state_grad = torch.is_grad_enabled() and init is not None and init.requires_grad
    block = max(1, BLOCK_TOKENS * min(torch.get_num_threads(), 8) // (lay.rows * HV * C))
    n_chunks = lay.slots // C
    for j0 in range(0, n_chunks, block):
        j1 = min(j0 + block, n_chunks)
        # 1. this block's tokens in the chunked layout [R, chunks, H, G, C, ...], as views: the
        # first products copy them (q is not scaled here: the scale goes into step 4's matmul)
        x = [None if t is None else _to_chunks(lay.take(t.to(dt), j0 * C, j1 * C), H, C)
             for t in (r.q, r.k, r.v, r.g, r.b, r.w)]
        # 2. intra-chunk terms of the block
        # (an initial state that needs a gradient: no buffers, the graph keeps every block's terms)
        it = _intra(*x, sub=sub, work=None if state_grad else work)
        # 3. carry the state through the block's chunks; 4. outputs of the block
        # O = scale · (Q_γ S₀ + M U), [n · R·H·G, C, V]
        if it.owned and it.last is not None and not state_grad:  # buffers and views reused
            o_blk, s, ends = _StateWork.get(it, s, lead, work).run(s, j0, lay, reset, r.scale)
        else:
            s0, u, s, ends = _carry(it, s, lead, j0, lay, reset)
            o_blk = torch.baddbmm(_flat(it.m, lead) @ u, _flat(it.q_gamma, lead), s0, beta=r.scale,
                                  alpha=r.scale)
        for j, sj in ends.items():
            finals[lay.ends[j]] = sj
        # 5. written to their tokens
        o_blk = o_blk.view(j1 - j0, lay.rows, H, G, C, V).transpose(0, 1)
        lay.put(o, o_blk, j0 * C, j1 * C)

    o = o[:, :T]
    if not r.output_final_state:
        return o, None
    if lay.token is None:
        final = s
    else:
        for n in lay.empty:
            finals[n] = zero if init is None else init[n]
        final = torch.stack(finals)
    return o, final.reshape(N, HV, K, V)
