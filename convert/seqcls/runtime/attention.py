"""Packed (variable-length) attention plugged into transformers' own decoder layers.

The engine runs the stock backbone on one flat token stream ``[1, T]`` holding many sequences, with
per-sequence position ids. Attention is the one place that must know where sequences begin: this
module registers an attention function (``ATTN_NAME``) with transformers' ``AttentionInterface``;
it reads the pack layout from a thread-local ``PackContext`` and attends each sequence only to
itself. Shared prefixes (system prompt + instruction + query) are sequences of the stream too,
computed once per pack; every sequence that continues a prefix attends to the prefix's keys and
values followed by its own (causal, bottom-right aligned), exactly as if it had been scored whole.

* CUDA, fp16/bf16: one flash-attention varlen call per layer (``aten._flash_attention_forward``),
  keys/values gathered per sequence when there is a prefix; under the fused decoder, packs go
  through ``fused.prefix_attention`` instead, which reads a shared prefix in place;
* otherwise (CPU, fp32, soft-capping): scaled-dot-product attention per sequence, exact.

Since no mask function is registered for the name, transformers builds no mask at all. Outside a
packed pass (``current()`` is None) the function is transformers' SDPA attention.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ATTN_NAME = "seqcls_packed"
DENSE_NAME = "seqcls_dense"  # padded batches: transformers' SDPA attention, but no mask building (no host sync)
_LOCAL = threading.local()
_REGISTERED = False


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; through pinned memory on CUDA so the copy does not stall the host."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class PackContext:
    """Layout of one packed forward pass.

    Attributes:
        starts, lengths: where each sequence's tokens sit in the stream (python ints). Shared prefixes
            are sequences of the stream too.
        prefix_starts, prefix_lens: for each sequence, the stream span of the prefix it continues
            (length 0 for none); its keys/values are that span followed by its own.
        use_flash: run the CUDA varlen kernel.
        cu_q, cu_k, max_q, max_k, kv_index: the varlen kernel's arguments (built on the device);
            ``kv_index`` lists the stream rows of each sequence's keys/values (None: the stream's own).
        scored_from: the first scored sequence (the ones before it are shared prefixes).
        last_cu_q, last_cu_k, last_max_k, last_kv_index: the varlen arguments for the last token of
            each scored sequence (the last layer's attention).
        last_rows: the stream row of each scored sequence's last token.
        masks: the per-sequence attention masks of the CPU path, by shape, built once per pack.
        seqs, blocks: the tables of ``fused.prefix_attention`` (built when ``blocks`` is given to
            ``build``): [4, S] stream start, length, prefix start, prefix length of each sequence, and
            [2, B] sequence and first query of each block of queries. With them, attention reads the
            prefixes' keys and values where they are and ``kv_index`` is not built.
    """

    starts: list[int]
    lengths: list[int]
    prefix_starts: list[int]
    prefix_lens: list[int]
    use_flash: bool = False
    cu_q: torch.Tensor | None = None
    cu_k: torch.Tensor | None = None
    max_q: int = 0
    max_k: int = 0
    kv_index: torch.Tensor | None = None
    scored_from: int = 0
    last_cu_q: torch.Tensor | None = None
    last_cu_k: torch.Tensor | None = None
    last_max_k: int = 0
    last_kv_index: torch.Tensor | None = None
    last_rows: torch.Tensor | None = None
    seqs: torch.Tensor | None = None
    blocks: torch.Tensor | None = None
    masks: dict = field(default_factory=dict)

    @property
    def has_prefix(self) -> bool:
        return any(self.prefix_lens)

    @classmethod
    def build(cls, lengths: list[int], device: torch.device, *, use_flash: bool,
              prefixes: list[tuple[int, int]] | None = None, scored_from: int = 0, blocks: int = 0) -> "PackContext":
        """Layout for sequences of ``lengths``; ``prefixes[i]`` is the (start, length) in the stream of
        the prefix sequence ``i`` continues, or (0, 0); sequences from ``scored_from`` on are scored
        (the earlier ones are prefixes). ``blocks``: the query rows per block of ``fused.prefix_attention``
        (0: attention through the varlen flash kernel). Every index array reaches the device in one copy."""
        lens = np.asarray(lengths, dtype=np.int64)
        starts = np.zeros_like(lens)
        np.cumsum(lens[:-1], out=starts[1:])
        spans = prefixes or [(0, 0)] * len(lengths)
        p_starts = np.asarray([a for a, _ in spans], dtype=np.int64)
        p_lens = np.asarray([b for _, b in spans], dtype=np.int64)
        ctx = cls(starts.tolist(), lens.tolist(), p_starts.tolist(), p_lens.tolist(), use_flash, scored_from=scored_from)
        host = {"last_rows": (starts + lens)[scored_from:] - 1}
        if use_flash:
            kv_lens = lens + p_lens
            host["cu_q"] = _boundaries(lens)
            host["cu_k"] = _boundaries(kv_lens)
            ctx.max_q = int(lens.max())
            ctx.max_k = int(kv_lens.max())
            # the last layer: one query per scored sequence, over the same keys/values
            host["last_cu_q"] = np.arange(len(lens) - scored_from + 1)
            host["last_cu_k"] = _boundaries(kv_lens[scored_from:])
            ctx.last_max_k = int(kv_lens[scored_from:].max())
            if scored_from or p_lens.any():  # else both read the stream's own rows, in order: no index
                rows = _kv_rows(starts, lens, p_starts, p_lens)
                if p_lens.any() and not blocks:
                    host["kv_index"] = rows
                # the prefix sequences' own rows come first in ``rows``, so the scored ones' are its tail
                host["last_kv_index"] = rows[int(kv_lens[:scored_from].sum()):]
        if blocks:
            host["seqs"] = np.stack([starts, lens, p_starts, p_lens])
            per_seq = -(-lens // blocks)
            first = np.repeat(np.cumsum(per_seq) - per_seq, per_seq)
            host["blocks"] = np.stack([np.repeat(np.arange(len(lens)), per_seq), (np.arange(int(per_seq.sum())) - first) * blocks])
        for name, tensor in _upload(host, device).items():
            setattr(ctx, name, tensor)
        return ctx

    def spans(self, first: int = 0) -> list[tuple[int, int, int, int]]:
        """(start, length, prefix start, prefix length) of each sequence from ``first`` on."""
        return list(zip(self.starts, self.lengths, self.prefix_starts, self.prefix_lens))[first:]


def _upload(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Integer arrays on ``device`` as int32 views of one buffer, copied in one transfer."""
    flat = np.concatenate([np.ravel(a) for a in arrays.values()]).astype(np.int32)
    buffer, out, at = to_device(flat, device), {}, 0
    for name, array in arrays.items():
        out[name] = buffer[at:at + array.size].view(array.shape)
        at += array.size
    return out


def _boundaries(lengths: Any) -> np.ndarray:
    """Cumulative sequence boundaries [0, l0, l0 + l1, ...] as the varlen kernels take them (int32)."""
    out = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=out[1:])
    return out


def ranges(starts: Any, lengths: Any) -> np.ndarray:
    """The concatenation of ``arange(s, s + n)`` over ``zip(starts, lengths)``, vectorised (int64)."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)


def _kv_rows(starts: Any, lengths: Any, p_starts: Any, p_lens: Any) -> np.ndarray:
    """The stream rows of each sequence's keys/values: its prefix's rows, then its own."""
    return ranges(np.stack([p_starts, starts], 1).ravel(), np.stack([p_lens, lengths], 1).ravel())


def current() -> PackContext | None:
    return getattr(_LOCAL, "ctx", None)


class active:
    """``with active(ctx):`` makes ``ctx`` the pack layout for this thread's forward pass."""

    def __init__(self, ctx: PackContext):
        self.ctx = ctx

    def __enter__(self) -> PackContext:
        self.previous = current()
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


def _causal_mask(q_len: int, prefix: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Boolean [q_len, prefix + q_len] mask: causal, bottom-right aligned, optional sliding window."""
    q_pos = torch.arange(q_len, device=device).unsqueeze(1) + prefix
    k_pos = torch.arange(prefix + q_len, device=device).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int, scaling: float,
                window: int | None, softcap: float | None, masks: dict | None = None) -> torch.Tensor:
    """One sequence: q [H, L, D], k/v [KVH, P+L, D] -> [L, H, Dv]. ``masks``: a cache of the additive
    masks by shape (a pack's layers reuse them)."""
    q_len, kv_len = q.shape[1], k.shape[1]
    if softcap is None:
        # 4-D inputs (strided views are fine) and native GQA take the fused (flash) SDPA kernel on CPU
        q4, k4, v4 = q[None], k[None], v[None]
        gqa = q.shape[0] != k.shape[0]
        if prefix == 0 and (window is None or window >= kv_len):
            out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            key = (q_len, prefix, window, q.dtype)
            mask = masks.get(key) if masks is not None else None
            if mask is None:
                mask = torch.zeros(q_len, kv_len, dtype=q.dtype, device=q.device)
                mask.masked_fill_(~_causal_mask(q_len, prefix, window, q.device), float("-inf"))
                if masks is not None:
                    masks[key] = mask
            out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        return out[0].transpose(0, 1)
    groups = q.shape[0] // k.shape[0]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
    # as transformers' eager attention: scale, soft-cap, mask, softmax in fp32
    scores = torch.matmul(q, k.transpose(1, 2)) * scaling
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~_causal_mask(q_len, prefix, window, q.device), torch.finfo(scores.dtype).min)
    out = torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)
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
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # [1, H, T, D] -> [T, H, D]
    out = attend_packed(ctx, query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), scaling,
                        sliding_window, softcap)
    return out.unsqueeze(0), None


def attend_packed(ctx: PackContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
                  sliding_window: int | None = None, softcap: float | None = None, out: torch.Tensor | None = None,
                  gathered: bool = False) -> torch.Tensor:
    """Packed attention: q [T, H, D], k/v [T, KVH, D] -> [T, H, Dv], each sequence attending to its
    prefix's keys and values (if any) and, causally, its own. ``out``: a buffer to write into on the
    per-sequence path (reused from layer to layer, a fresh one costs page faults on CPU). ``gathered``
    (flash only): k/v are already the rows ``ctx.kv_index`` lists, in its order."""
    if ctx.seqs is not None and softcap is None:  # built only where no sliding window cuts a sequence's keys
        from .fused import prefix_attention

        return prefix_attention(q, k, v, ctx.blocks, ctx.seqs, scaling, out)
    if ctx.use_flash and softcap is None:
        if ctx.kv_index is not None and not gathered:
            k = k.index_select(0, ctx.kv_index)
            v = v.index_select(0, ctx.kv_index)
        return _flash(q, k, v, ctx.cu_q, ctx.cu_k, ctx.max_q, ctx.max_k, scaling, sliding_window)
    # one sequence at a time, in this thread, each op on torch's threads: measured faster on CPU than
    # sharing the sequences out over Python threads (their ops slow the GEMMs, and a busy machine
    # stalls them badly)
    if out is None:
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    _attend_each(ctx.spans(), q, k, v, out, scaling, sliding_window, softcap, ctx.masks)
    return out


def attend_packed_last(ctx: PackContext, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
                       sliding_window: int | None = None, gathered: bool = False) -> torch.Tensor:
    """The last token of each sequence from ``ctx.scored_from`` on (the stream's earlier sequences are
    shared prefixes) attending to its prefix's keys and values and all of its own: q [N, H, D], k/v
    [T, KVH, D] of the whole stream (``gathered``: the rows ``ctx.last_kv_index`` lists) -> [N, H, Dv].
    Flash varlen with one query per sequence, or SDPA per sequence without flash (the last token sees
    every key, so no mask)."""
    if not ctx.use_flash:
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        for row, span in enumerate(ctx.spans(ctx.scored_from)):
            ki, vi = _keys_values(span, k, v)
            if sliding_window is not None and ki.shape[0] > sliding_window:
                ki, vi = ki[-sliding_window:], vi[-sliding_window:]
            out[row] = F.scaled_dot_product_attention(q[row, :, None][None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None],
                                                      scale=scaling, enable_gqa=q.shape[1] != k.shape[1])[0, :, 0]
        return out
    if ctx.last_kv_index is not None and not gathered:
        k, v = k.index_select(0, ctx.last_kv_index), v.index_select(0, ctx.last_kv_index)
    return _flash(q, k, v, ctx.last_cu_q, ctx.last_cu_k, 1, ctx.last_max_k, scaling, sliding_window)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int,
           scaling: float, sliding_window: int | None) -> torch.Tensor:
    """Causal (bottom-right aligned) flash-attention varlen over the given sequence boundaries."""
    window = -1 if sliding_window is None else int(sliding_window) - 1
    # the kernel takes row and head strides: strided views of a fused q/k/v buffer need no copy
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k,
        0.0, True, False, scale=float(scaling), window_size_left=window, window_size_right=-1 if window < 0 else 0,
    )[0]


def _keys_values(span: tuple[int, int, int, int], k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's keys and values, its prefix's rows (if any) followed by its own: the per-sequence
    counterpart of ``_kv_rows``."""
    start, n, p_start, shared = span
    if not shared:
        return k[start:start + n], v[start:start + n]
    return (torch.cat([k[p_start:p_start + shared], k[start:start + n]]),
            torch.cat([v[p_start:p_start + shared], v[start:start + n]]))


def _attend_each(spans: list[tuple[int, int, int, int]], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 scaling: float, sliding_window: int | None, softcap: float | None, masks: dict | None = None) -> None:
    """Sequences given as (start, length, prefix start, prefix length) spans of the stream, one by one."""
    for start, n, p_start, shared in spans:
        qi = q[start:start + n]
        ki, vi = _keys_values((start, n, p_start, shared), k, v)
        if shared and softcap is None and q.device.type != "cpu" and (sliding_window is None or sliding_window >= shared + n):
            # with the prefix's own queries in front, plain causal attention needs no mask (the kernel skips
            # the blocks above the diagonal); only the sequence's rows are kept. On CPU the masked call
            # over the sequence's own queries measured a few percent faster (the prefix's queries are
            # not recomputed)
            qi = torch.cat([q[p_start:p_start + shared], qi])
            full = _attend_one(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1), 0, scaling, sliding_window, softcap)
            out[start:start + n] = full[shared:]
        else:
            out[start:start + n] = _attend_one(qi.transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1), shared, scaling, sliding_window,
                                               softcap, masks)


def dense_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Right-padded batches without a mask: causal SDPA (padding comes after every real token, so real
    tokens never see it). Registered without a mask function, so transformers builds no mask and never
    inspects position ids on the host (which would synchronise with the GPU every pass)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is not None:
        raise RuntimeError("seqcls dense attention does not support soft-capping; use the packed layout")
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


def register() -> str:
    """Register the packed and dense attention functions with transformers (once); returns the packed name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, packed_attention)
        AttentionInterface.register(DENSE_NAME, dense_attention)
        _REGISTERED = True
    return ATTN_NAME
