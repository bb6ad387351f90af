"""The exact recurrence, token by token: the specification every fast path is tested against.

For each sequence, value head and token t (DESIGN §1):

    1. decay:  S ← Diag(exp(g_t)) S                  (g per head or per key channel; -inf resets)
    2. erase:  S ← S − k_t (e_tᵀ S),  e_t = b_t ⊙ k_t  (b per head or per key channel)
    3. write:  S ← S + k_t z_tᵀ,      z_t = w_t ⊙ v_t  (w per head or per value channel)
    4. read:   o_t = Sᵀ (scale · q_t)                 (after the update)

Steps 2 and 3 together are ``S ← (I − k eᵀ) S + k zᵀ``. Everything runs in the state dtype
(float32, or float64 for float64 inputs); the output is cast to ``v``'s dtype.
"""

from __future__ import annotations

import torch

from .spec import Recurrence


def _at(x: torch.Tensor | None, row: int, t: int) -> torch.Tensor | None:
    return None if x is None else x[row, t]


def _per_value_head(x: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    """q/k heads are shared by ``groups`` consecutive value heads (GVA)."""
    return None if x is None else x.repeat_interleave(groups, dim=0)


def recurrence(r: Recurrence) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the general recurrence on normalised inputs.

    Returns ``o`` ``[B, T, HV, V]`` (dtype of ``v``) and the final state ``[N, HV, K, V]`` (state
    dtype) if ``r.output_final_state`` else ``None``.
    """
    B, T, H, K = r.q.shape
    HV, V = r.v.shape[2], r.v.shape[3]
    groups = HV // H
    dt = r.state_dtype
    q, k, v = (x.to(dt) for x in (r.q, r.k, r.v))
    g, b, w = (None if x is None else x.to(dt) for x in (r.g, r.b, r.w))

    o = torch.zeros(B, T, HV, V, dtype=dt, device=v.device)
    finals = []
    for n, (row, start, end) in enumerate(r.sequences()):
        if r.initial_state is not None:
            S = r.initial_state[n].to(dt)
        else:
            S = torch.zeros(HV, K, V, dtype=dt, device=v.device)
        for t in range(start, end):
            q_t = _per_value_head(q[row, t], groups) * r.scale  # [HV, K]
            k_t = _per_value_head(k[row, t], groups)  # [HV, K]
            v_t = v[row, t]  # [HV, V]
            g_t, b_t, w_t = _at(g, row, t), _at(b, row, t), _at(w, row, t)

            # 1. decay
            if g_t is not None:
                decay = torch.exp(g_t)
                S = S * (decay[:, None, None] if decay.ndim == 1 else decay[:, :, None])
            # 2. erase along e = b ⊙ k
            if b_t is not None:
                e_t = b_t[:, None] * k_t if b_t.ndim == 1 else b_t * k_t  # [HV, K]
                S = S - k_t[:, :, None] * torch.einsum("hk,hkv->hv", e_t, S)[:, None, :]
            # 3. write z = w ⊙ v
            z_t = v_t if w_t is None else (w_t[:, None] * v_t if w_t.ndim == 1 else w_t * v_t)
            S = S + k_t[:, :, None] * z_t[:, None, :]
            # 4. read after the update
            o[row, t] = torch.einsum("hk,hkv->hv", q_t, S)
        finals.append(S)
    final = torch.stack(finals) if r.output_final_state else None
    return o.to(r.v.dtype), final
