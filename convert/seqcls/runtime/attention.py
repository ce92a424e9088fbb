"""Packed (variable-length) attention plugged into transformers' own decoder layers.

The engine runs the stock backbone on one flat token stream ``[1, T]`` holding many sequences, with
per-sequence position ids. Attention is the one place that must know where sequences begin: this
module registers an attention function (``ATTN_NAME``) with transformers' ``AttentionInterface``;
it reads the pack layout from a thread-local ``PackContext`` and attends each sequence only to
itself (and to a shared prefix's cached keys and values, when there is one):

* CUDA, fp16/bf16: one flash-attention varlen call per layer (``aten._flash_attention_forward``);
* otherwise (CPU, fp32, soft-capping): scaled-dot-product attention per sequence, exact.

Since no mask function is registered for the name, transformers builds no mask at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

ATTN_NAME = "seqcls_packed"
_LOCAL = threading.local()
_REGISTERED = False


@dataclass
class PackContext:
    """Layout of one packed forward pass.

    Attributes:
        starts, lengths: where each sequence's tokens sit in the stream (python ints).
        prefix_len: tokens of the shared prefix every sequence continues (0 for none).
        prefix_k, prefix_v: per-layer cached keys/values of the prefix, ``[P, kv_heads, dim]``.
        record: when True (the prefix pass), store this pass's keys/values as the prefix cache.
        use_flash: run the CUDA varlen kernel.
        cu_q, cu_k, max_q, max_k, kv_index: the varlen kernel's arguments (built on the device).
    """

    starts: list[int]
    lengths: list[int]
    prefix_len: int = 0
    prefix_k: list[torch.Tensor] = field(default_factory=list)
    prefix_v: list[torch.Tensor] = field(default_factory=list)
    record: bool = False
    use_flash: bool = False
    cu_q: torch.Tensor | None = None
    cu_k: torch.Tensor | None = None
    max_q: int = 0
    max_k: int = 0
    kv_index: torch.Tensor | None = None
    layer: int = 0

    @classmethod
    def build(cls, lengths: list[int], device: torch.device, *, use_flash: bool, prefix_len: int = 0,
              prefix_k: list[torch.Tensor] | None = None, prefix_v: list[torch.Tensor] | None = None,
              record: bool = False) -> "PackContext":
        starts, total = [], 0
        for n in lengths:
            starts.append(total)
            total += n
        ctx = cls(starts, list(lengths), prefix_len, prefix_k or [], prefix_v or [], record, use_flash)
        if use_flash:
            cu_q = [0]
            cu_k = [0]
            for n in lengths:
                cu_q.append(cu_q[-1] + n)
                cu_k.append(cu_k[-1] + n + prefix_len)
            ctx.cu_q = torch.tensor(cu_q, dtype=torch.int32, device=device)
            ctx.cu_k = torch.tensor(cu_k, dtype=torch.int32, device=device)
            ctx.max_q = max(lengths)
            ctx.max_k = max(lengths) + prefix_len
            if prefix_len:
                # keys/values of sequence i = prefix rows [0, P) then its own rows, in cat([prefix, stream])
                index = []
                for start, n in zip(starts, lengths):
                    index.extend(range(prefix_len))
                    index.extend(range(prefix_len + start, prefix_len + start + n))
                ctx.kv_index = torch.tensor(index, dtype=torch.long, device=device)
        return ctx


def current() -> PackContext | None:
    return getattr(_LOCAL, "ctx", None)


class active:
    """``with active(ctx):`` makes ``ctx`` the pack layout for this thread's forward pass."""

    def __init__(self, ctx: PackContext):
        self.ctx = ctx

    def __enter__(self) -> PackContext:
        self.previous = current()
        self.ctx.layer = 0
        _LOCAL.ctx = self.ctx
        return self.ctx

    def __exit__(self, *exc: Any) -> None:
        _LOCAL.ctx = self.previous


def flash_supported(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the CUDA varlen flash kernel can run this model's attention."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    if head_dim > 256 or head_dim % 8:
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and hasattr(torch.ops.aten, "_flash_attention_forward")


def _window_mask(q_len: int, prefix: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Boolean [q_len, prefix + q_len] mask: causal, bottom-right aligned, optional sliding window."""
    q_pos = torch.arange(q_len, device=device).unsqueeze(1) + prefix
    k_pos = torch.arange(prefix + q_len, device=device).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int, scaling: float,
                window: int | None, softcap: float | None) -> torch.Tensor:
    """One sequence: q [H, L, D], k/v [KVH, P+L, D] -> [L, H, Dv]."""
    groups = q.shape[0] // k.shape[0]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
    q_len, kv_len = q.shape[1], k.shape[1]
    plain_causal = prefix == 0 and (window is None or window >= kv_len)
    if softcap is None:
        if plain_causal:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
        else:
            mask = _window_mask(q_len, prefix, window, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    else:  # as transformers' eager attention: scale, soft-cap, mask, softmax in fp32
        scores = torch.matmul(q, k.transpose(1, 2)) * scaling
        scores = torch.tanh(scores / softcap) * softcap
        mask = _window_mask(q_len, prefix, window, q.device)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v)
    return out.transpose(0, 1)


@torch.compiler.disable
def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function for packed streams (query ``[1, H, T, D]``)."""
    ctx = current()
    if ctx is None:  # an ordinary (padded) batch: transformers' own SDPA attention
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, softcap=softcap, **kwargs)
    layer = ctx.layer
    ctx.layer += 1
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)  # [T, KVH, D]
    v = value[0].transpose(0, 1)
    if ctx.record:
        ctx.prefix_k.append(k.contiguous())
        ctx.prefix_v.append(v.contiguous())
    prefix = ctx.prefix_len
    if ctx.use_flash and softcap is None:
        if prefix:
            k = torch.cat([ctx.prefix_k[layer], k]).index_select(0, ctx.kv_index)
            v = torch.cat([ctx.prefix_v[layer], v]).index_select(0, ctx.kv_index)
        window = -1 if sliding_window is None else int(sliding_window) - 1
        out = torch.ops.aten._flash_attention_forward(
            q.contiguous(), k.contiguous(), v.contiguous(), ctx.cu_q, ctx.cu_k, ctx.max_q, ctx.max_k,
            0.0, True, False, scale=float(scaling), window_size_left=window, window_size_right=-1 if window < 0 else 0,
        )[0]
        return out.unsqueeze(0), None
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    pk = ctx.prefix_k[layer] if prefix else None
    pv = ctx.prefix_v[layer] if prefix else None
    for start, n in zip(ctx.starts, ctx.lengths):
        qi = q[start:start + n].transpose(0, 1)
        ki = k[start:start + n]
        vi = v[start:start + n]
        if prefix:
            ki = torch.cat([pk, ki])
            vi = torch.cat([pv, vi])
        out[start:start + n] = _attend_one(qi, ki.transpose(0, 1), vi.transpose(0, 1), prefix, scaling, sliding_window, softcap)
    return out.unsqueeze(0), None


def register() -> str:
    """Register ``packed_attention`` with transformers (once) and return its implementation name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, packed_attention)
        _REGISTERED = True
    return ATTN_NAME
