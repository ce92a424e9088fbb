"""A scoring forward for the Llama family: fused matrix products, three elementwise kernels a layer.

transformers' decoder layer runs about fifteen kernels per layer in eager mode; compiled, Inductor
fuses its elementwise work but each layer costs a graph-guard check per call and the model tens of
seconds of compilation before the first score. This module runs the same layer as nine kernels with
no compilation:

1. RMSNorm (Triton, one pass over each row);
2. ``h @ Wqkv^T`` (cuBLAS, biases in its epilogue);
3. q/k RMSNorm and the rotary embedding, in place on the q/k heads (Triton, one pass);
4. attention (the engine's: seqcls's Triton kernel on packed streams, see below; dense cuDNN/flash SDPA
   on padded batches);
5. ``x += o @ Wo^T`` (cuBLAS ``addmm_`` in place: the residual add is the GEMM's epilogue, and the
   residual stream is not copied first);
6. RMSNorm;
7. ``h @ [Wg; Wu]^T`` (cuBLAS, one product for both);
8. SiLU(g) * u (Triton);
9. ``x += a @ Wd^T`` (cuBLAS ``addmm_``).

On CUDA, step 4 is seqcls's own Triton attention (``prefix_attention``) on packed streams: each
sequence's queries read its shared prefix's keys and values (if any) where they sit in the stream,
then their own, so nothing is gathered and nothing is padded. Where that kernel is not used (a
sliding window that binds) and in the last layer, whose queries are one row per sequence for flash
varlen, step 3 instead writes each sequence's rotated keys and its values straight into the varlen
layout, the prefix's rows once per sequence (``kv_gather_rope``).

Norms, rotary and the activation compute in float32 and round once, where transformers rounds some
intermediates to bf16, so scores differ from transformers' bf16 run by bf16 noise (the tests compare
both against float32). Used for bf16/fp16 on CUDA when Triton is present.

On the CPU the same layer runs with PyTorch's own ops in place of the Triton kernels (``kernels=
"torch"``), everything but attention in blocks of 512 rows so that intermediates stay in cache: one
product for q/k/v written into a buffer reused by every layer, the q/k norm and rotary in place,
in-place ``addmm_`` residuals, gate and up as two products (two outputs of half the width, each
small enough for the cache), and the last layer only at the rows the head reads. In float32 it
equals transformers' layers to rounding (the tests hold scores within 1e-5). Architectures outside
the Llama family, and ``fused=False``, run transformers' own layers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

try:  # Triton ships with CUDA builds of torch; without it nothing here is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None
    tl = None


def supported(model: Any, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when ``FusedDecoder`` can run ``model`` on ``device`` in ``dtype``, else the reason it cannot.

    CUDA needs Triton, bf16/fp16 and a head dimension of 64, 128 or 256 (the Triton kernels'); the CPU
    runs any dtype with PyTorch's ops.
    """
    if device.type == "cuda":
        if triton is None:
            return "Triton is not installed"
        if dtype not in (torch.bfloat16, torch.float16):
            return "on a CUDA GPU it needs bf16 or fp16"
    elif device.type != "cpu":
        return f"it runs on CUDA GPUs and the CPU, not on {device.type}"
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    backbone = getattr(model, "model", None)
    if backbone is None or not hasattr(backbone, "layers") or not hasattr(backbone, "rotary_emb"):
        return "the backbone has no layers or rotary embedding"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        return "its layers mix full and sliding-window attention"
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0):
        return "its rotary embedding covers only part of each head"
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if device.type == "cuda" and head_dim not in (64, 128, 256):
        return f"head dimension {head_dim} is not 64, 128 or 256"
    if head_dim % 2:
        return f"head dimension {head_dim} is odd"
    first = backbone.layers[0]
    attn, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    needed = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (mlp, "gate_proj"), (mlp, "up_proj"),
              (mlp, "down_proj"), (first, "input_layernorm"), (first, "post_attention_layernorm")]
    if any(getattr(owner, name, None) is None for owner, name in needed):
        return "the decoder layers are not laid out as in Llama"
    return None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, M, stride_x, stride_out, eps, N: tl.constexpr, BLOCK: tl.constexpr,
                         ROWS: tl.constexpr):
        """out = x / sqrt(mean(x^2) + eps) * w, row by row, in float32, rounded once."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        mask = (rows < M)[:, None] & (cols < N)[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        y = x * rstd[:, None] * w[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _qk_rope_kernel(qkv_ptr, norm_ptr, cos_ptr, sin_ptr, M, stride_qkv, stride_cs, eps, HQ: tl.constexpr,
                        HK: tl.constexpr, D: tl.constexpr, QK_NORM: tl.constexpr, ROWS: tl.constexpr):
        """In place on the q and k heads of ROWS rows: per-head RMSNorm (q_norm/k_norm), then rotary
        (column j paired with j + D/2, as transformers' rotate_half); cos/sin are read once per row."""
        HALF: tl.constexpr = D // 2
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = (rows < M)[:, None]
        offs = tl.arange(0, HALF)[None, :]
        cs = rows[:, None].to(tl.int64) * stride_cs + offs
        cos1 = tl.load(cos_ptr + cs, mask=row_ok, other=0.0).to(tl.float32)
        cos2 = tl.load(cos_ptr + cs + HALF, mask=row_ok, other=0.0).to(tl.float32)
        sin1 = tl.load(sin_ptr + cs, mask=row_ok, other=0.0).to(tl.float32)
        sin2 = tl.load(sin_ptr + cs + HALF, mask=row_ok, other=0.0).to(tl.float32)
        if QK_NORM:
            qw1 = tl.load(norm_ptr + offs).to(tl.float32)
            qw2 = tl.load(norm_ptr + HALF + offs).to(tl.float32)
            kw1 = tl.load(norm_ptr + D + offs).to(tl.float32)
            kw2 = tl.load(norm_ptr + D + HALF + offs).to(tl.float32)
        row_base = qkv_ptr + rows[:, None].to(tl.int64) * stride_qkv + offs
        for head in tl.static_range(HQ + HK):
            base = row_base + head * D
            y1 = tl.load(base, mask=row_ok, other=0.0).to(tl.float32)
            y2 = tl.load(base + HALF, mask=row_ok, other=0.0).to(tl.float32)
            if QK_NORM:
                r = tl.rsqrt((tl.sum(y1 * y1, axis=1) + tl.sum(y2 * y2, axis=1)) / D + eps)[:, None]
                if head < HQ:
                    y1, y2 = y1 * r * qw1, y2 * r * qw2
                else:
                    y1, y2 = y1 * r * kw1, y2 * r * kw2
            tl.store(base, (y1 * cos1 - y2 * sin1).to(qkv_ptr.dtype.element_ty), mask=row_ok)
            tl.store(base + HALF, (y2 * cos2 + y1 * sin2).to(qkv_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def _kv_gather_rope_kernel(qkv_ptr, out_ptr, src_ptr, norm_ptr, cos_ptr, sin_ptr, R, stride_qkv, stride_out, stride_cs, eps,
                               HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, QK_NORM: tl.constexpr, ROWS: tl.constexpr):
        """Row r of out = [k_norm + rotary of the keys, the values] of qkv's row src[r]: the keys and
        values each sequence attends to, gathered into the layout the varlen kernel reads (a shared
        prefix's rows once per sequence that continues it), in the pass that rotates them."""
        HALF: tl.constexpr = D // 2
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = (rows < R)[:, None]
        src = tl.load(src_ptr + rows, mask=rows < R, other=0).to(tl.int64)
        offs = tl.arange(0, HALF)[None, :]
        cs = src[:, None] * stride_cs + offs
        cos1 = tl.load(cos_ptr + cs, mask=row_ok, other=0.0).to(tl.float32)
        cos2 = tl.load(cos_ptr + cs + HALF, mask=row_ok, other=0.0).to(tl.float32)
        sin1 = tl.load(sin_ptr + cs, mask=row_ok, other=0.0).to(tl.float32)
        sin2 = tl.load(sin_ptr + cs + HALF, mask=row_ok, other=0.0).to(tl.float32)
        if QK_NORM:
            kw1 = tl.load(norm_ptr + D + offs).to(tl.float32)
            kw2 = tl.load(norm_ptr + D + HALF + offs).to(tl.float32)
        src_base = qkv_ptr + src[:, None] * stride_qkv + HQ * D + offs
        out_base = out_ptr + rows[:, None].to(tl.int64) * stride_out + offs
        for head in tl.static_range(HK):
            y1 = tl.load(src_base + head * D, mask=row_ok, other=0.0).to(tl.float32)
            y2 = tl.load(src_base + head * D + HALF, mask=row_ok, other=0.0).to(tl.float32)
            if QK_NORM:
                r = tl.rsqrt((tl.sum(y1 * y1, axis=1) + tl.sum(y2 * y2, axis=1)) / D + eps)[:, None]
                y1, y2 = y1 * r * kw1, y2 * r * kw2
            tl.store(out_base + head * D, (y1 * cos1 - y2 * sin1).to(out_ptr.dtype.element_ty), mask=row_ok)
            tl.store(out_base + head * D + HALF, (y2 * cos2 + y1 * sin2).to(out_ptr.dtype.element_ty), mask=row_ok)
        for head in tl.static_range(HK, 2 * HK):
            tl.store(out_base + head * D, tl.load(src_base + head * D, mask=row_ok, other=0.0), mask=row_ok)
            tl.store(out_base + head * D + HALF, tl.load(src_base + head * D + HALF, mask=row_ok, other=0.0), mask=row_ok)

    @triton.jit
    def _prefix_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, blocks_ptr, seqs_ptr, n_blocks, n_seqs, stride_qt, stride_qh,
                                 stride_kt, stride_kh, stride_ot, stride_oh, qk_scale, G: tl.constexpr, GP: tl.constexpr,
                                 D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Causal attention over a packed stream in which sequences may continue a shared prefix: the
        queries of one block of BLOCK_M rows of one sequence, for GP query heads that share a key head,
        attend to the prefix's keys and values where they sit in the stream (every query sees all of
        them), then causally to the sequence's own. Online softmax in float32 (exp2, scale folded in).

        ``blocks``: [2, n_blocks] (sequence, first query row within it); ``seqs``: [4, n_seqs] (stream
        start, length, prefix start, prefix length)."""
        blk = tl.program_id(0)
        head0 = tl.program_id(1) * GP
        kvh = head0 // G
        seq = tl.load(blocks_ptr + blk)
        q0 = tl.load(blocks_ptr + n_blocks + blk)
        start = tl.load(seqs_ptr + seq).to(tl.int64)
        length = tl.load(seqs_ptr + n_seqs + seq)
        p_start = tl.load(seqs_ptr + 2 * n_seqs + seq).to(tl.int64)
        p_len = tl.load(seqs_ptr + 3 * n_seqs + seq)
        R: tl.constexpr = BLOCK_M * GP  # rows of the product: GP heads of BLOCK_M queries
        r = tl.arange(0, R)
        pos = q0 + r % BLOCK_M
        valid = (pos < length)[:, None]
        d = tl.arange(0, D)[None, :]
        heads = (head0 + r // BLOCK_M)[:, None]
        q = tl.load(q_ptr + (start + pos)[:, None] * stride_qt + heads * stride_qh + d, mask=valid, other=0.0)
        m_i = tl.full([R], float("-inf"), tl.float32)
        l_i = tl.zeros([R], tl.float32)
        acc = tl.zeros([R, D], tl.float32)
        n = tl.arange(0, BLOCK_N)
        column = kvh * stride_kh + d
        # three passes over key blocks: the prefix's (all visible), the sequence's own that every query of
        # this block sees whole, and the rest of its own up to the block's last query (causal mask)
        full = (q0 // BLOCK_N) * BLOCK_N
        last = tl.minimum(length, q0 + BLOCK_M)
        for part in tl.static_range(3):
            if part == 0:
                lo, hi, base = 0, p_len, p_start
            elif part == 1:
                lo, hi, base = 0, full, start
            else:
                lo, hi, base = full, last, start
            for n0 in range(lo, hi, BLOCK_N):
                keys = n0 + n
                rows = (base + keys)[:, None] * stride_kt + column
                if part == 1:
                    k = tl.load(k_ptr + rows)
                    v = tl.load(v_ptr + rows)
                else:
                    k = tl.load(k_ptr + rows, mask=(keys < hi)[:, None], other=0.0)
                    v = tl.load(v_ptr + rows, mask=(keys < hi)[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k)) * qk_scale
                if part == 0:
                    s = tl.where((keys < hi)[None, :], s, float("-inf"))
                elif part == 2:
                    s = tl.where(keys[None, :] <= pos[:, None], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.math.exp2(s - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
        out = acc / l_i[:, None]
        tl.store(o_ptr + (start + pos)[:, None] * stride_ot + heads * stride_oh + d, out.to(o_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, M, N, stride_gu, stride_out, ROWS: tl.constexpr, BN: tl.constexpr):
        """out = silu(gu[:, :N]) * gu[:, N:] in float32, rounded once."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        mask = (rows < M)[:, None] & (cols < N)[None, :]
        base = gu_ptr + rows[:, None].to(tl.int64) * stride_gu + cols[None, :]
        g = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(base + N, mask=mask, other=0.0).to(tl.float32)
        out = out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :]
        tl.store(out, (g * tl.sigmoid(g) * u).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm of each row of ``x`` [M, N]."""
    M, N = x.shape
    out = torch.empty_like(x)
    block = triton.next_power_of_2(N)
    rows = max(1, min(16, 8192 // block))
    _rms_norm_kernel[(triton.cdiv(M, rows),)](x, weight, out, M, x.stride(0), out.stride(0), eps, N=N, BLOCK=block, ROWS=rows,
                                              num_warps=4 if block <= 2048 else 8)
    return out


def qk_norm_rope_(qkv: torch.Tensor, qk_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                  kv_heads: int, head_dim: int, eps: float, rows: int | None = None, warps: int = 4) -> torch.Tensor:
    """In place on ``qkv`` [M, (heads + 2 kv_heads) * head_dim] (queries, keys, values): q/k RMSNorm
    (``qk_norm``: q_norm's weight then k_norm's, or None) and the rotary embedding (``cos``/``sin``
    [M, head_dim]) on the query and key heads."""
    M = qkv.shape[0]
    rows = rows or (8 if kv_heads == 0 else 32)  # the queries alone (keys gathered apart): measured faster in 8-row programs
    _qk_rope_kernel[(triton.cdiv(M, rows),)](
        qkv, qk_norm if qk_norm is not None else cos, cos, sin, M, qkv.stride(0), cos.stride(0), eps, HQ=heads, HK=kv_heads,
        D=head_dim, QK_NORM=qk_norm is not None, ROWS=rows, num_warps=warps)
    return qkv


def kv_gather_rope(qkv: torch.Tensor, rows: torch.Tensor, qk_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                   heads: int, kv_heads: int, head_dim: int, eps: float, out: torch.Tensor | None = None, block: int = 16,
                   warps: int = 2) -> torch.Tensor:
    """[len(rows), 2 * kv_heads * head_dim]: the keys (k_norm and rotary applied, as ``qk_norm_rope_``
    does in place) and values of ``qkv``'s rows ``rows``, where ``qkv`` holds ``heads`` query heads,
    then the key heads, then the value heads; ``qkv`` is not modified."""
    R, width = rows.shape[0], 2 * kv_heads * head_dim
    out = qkv.new_empty(R, width) if out is None else out
    _kv_gather_rope_kernel[(triton.cdiv(R, block),)](
        qkv, out, rows, qk_norm if qk_norm is not None else cos, cos, sin, R, qkv.stride(0), out.stride(0), cos.stride(0), eps,
        HQ=heads, HK=kv_heads, D=head_dim, QK_NORM=qk_norm is not None, ROWS=block, num_warps=warps)
    return out


# ``prefix_attention``: query rows per program (times the query heads it packs, up to ATTENTION_ROWS
# rows in all), key rows per step, warps and pipeline stages; tuned on an H100 (scripts/tune_fused.py)
ATTENTION_BLOCK_M, ATTENTION_BLOCK_N, ATTENTION_WARPS, ATTENTION_STAGES, ATTENTION_ROWS = 32, 32, 4, 2, 64


def attention_heads_per_program(heads: int, kv_heads: int) -> int:
    """Query heads one ``prefix_attention`` program packs: those sharing a key head, a power of two,
    at most ATTENTION_ROWS product rows."""
    group, packed = heads // kv_heads, 1
    while group % (packed * 2) == 0 and ATTENTION_BLOCK_M * packed * 2 <= ATTENTION_ROWS:
        packed *= 2
    return packed


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor, seqs: torch.Tensor, scaling: float,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed causal attention with shared prefixes read in place: q [T, H, D], k/v [T, KVH, D] (strided
    views of the stream's q/k/v buffer are fine) -> [T, H, D]. ``seqs`` [4, S] int32: each sequence's
    stream start, length, prefix start and prefix length (0: none); ``blocks`` [2, B] int32: the
    sequence and first query row of each block of ``ATTENTION_BLOCK_M`` queries (both as
    ``PackContext.build(..., blocks=ATTENTION_BLOCK_M)`` makes them)."""
    T, H, D = q.shape
    out = q.new_empty(T, H, D) if out is None else out
    packed = attention_heads_per_program(H, k.shape[1])
    _prefix_attention_kernel[(blocks.shape[1], H // packed)](
        q, k, v, out, blocks, seqs, blocks.shape[1], seqs.shape[1], q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        out.stride(0), out.stride(1), scaling * 1.4426950408889634, G=H // k.shape[1], GP=packed, D=D, BLOCK_M=ATTENTION_BLOCK_M,
        BLOCK_N=ATTENTION_BLOCK_N, num_warps=ATTENTION_WARPS, num_stages=ATTENTION_STAGES)
    return out


def silu_mul(gu: torch.Tensor, rows: int = 4, block: int = 1024, warps: int = 4) -> torch.Tensor:
    """[M, 2N] (gate, up) -> [M, N] = silu(gate) * up."""
    M, two_n = gu.shape
    N = two_n // 2
    out = gu.new_empty(M, N)
    _silu_mul_kernel[(triton.cdiv(M, rows), triton.cdiv(N, block))](gu, out, M, N, gu.stride(0), out.stride(0), ROWS=rows,
                                                                    BN=block, num_warps=warps)
    return out


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm`` with PyTorch's ops (the CPU's): the fused op in float32; in lower precision
    transformers' order of operations (normalise in float32, round, then times the weight) in place on
    one float32 copy, faster on CPU than the fused op there. The mean square comes from
    ``vector_norm`` squared, so an output can differ from transformers' by one step of the dtype."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    wide = x.float()
    scale = torch.linalg.vector_norm(wide, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return wide.mul_(scale).to(x.dtype).mul_(weight)


def torch_qk_norm_rope_(qkv: torch.Tensor, qk_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                        kv_heads: int, head_dim: int, eps: float) -> torch.Tensor:
    """``qk_norm_rope_`` with PyTorch's ops, all in place on the q/k heads (no broadcast temporaries):
    the same arithmetic as transformers' q/k norm and ``apply_rotary_pos_emb``."""
    half = head_dim // 2
    qk = qkv[:, :(heads + kv_heads) * head_dim].view(qkv.shape[0], heads + kv_heads, head_dim)
    if qk_norm is not None:
        weight = torch.cat([qk_norm[:head_dim].expand(heads, head_dim), qk_norm[head_dim:].expand(kv_heads, head_dim)])
        qk.mul_(qk.float().pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_().to(qk.dtype)).mul_(weight)
    x1, x2 = qk[..., :half], qk[..., half:]
    first = x1.clone()
    x1.mul_(cos[:, None, :half]).addcmul_(x2, sin[:, None, :half], value=-1)
    x2.mul_(cos[:, None, half:]).addcmul_(first, sin[:, None, half:])
    return qkv


def torch_kv_gather_rope(qkv: torch.Tensor, rows: torch.Tensor, qk_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                         heads: int, kv_heads: int, head_dim: int, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``kv_gather_rope`` with PyTorch's ops."""
    nq = heads * head_dim
    kv = torch.index_select(qkv[:, nq:nq + 2 * kv_heads * head_dim], 0, rows, out=out)
    return torch_qk_norm_rope_(kv, qk_norm, cos.index_select(0, rows), sin.index_select(0, rows), 0, kv_heads, head_dim, eps)


def torch_silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """``silu_mul`` with PyTorch's ops."""
    n = gu.shape[1] // 2
    return F.silu(gu[:, :n]).mul_(gu[:, n:])


# rows per block on the CPU: float32 intermediates of 512 rows stay in cache; bf16/fp16 products (AMX)
# run faster on larger blocks (2048 was the best of 512-4096 on the §3 workload on an AMX CPU)
CPU_BLOCK_ROWS, CPU_BLOCK_ROWS_LOW_PRECISION = 512, 2048
KERNELS = {"triton": (rms_norm, qk_norm_rope_, silu_mul, kv_gather_rope),
           "torch": (torch_rms_norm, torch_qk_norm_rope_, torch_silu_mul, torch_kv_gather_rope)}


class FusedDecoder:
    """The decoder stack of a Llama-family ``*ForSequenceClassification`` model as nine kernels a layer.

    Concatenates the q/k/v and the gate/up weights once and re-points the model's projections at
    slices of the result, so no weight is held twice and the model keeps working. ``kernels``:
    ``triton`` (the default on CUDA) or ``torch`` (the default elsewhere).
    """

    def __init__(self, model: Any, kernels: str | None = None, block_rows: int | None = None):
        device = next(model.parameters()).device
        reason = supported(model, device, next(model.parameters()).dtype)
        if reason:
            raise ValueError(f"the fused decoder cannot run this model: {reason}")
        self.kernels = kernels or ("triton" if device.type == "cuda" else "torch")
        if self.kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}; use triton or torch")
        self.rms_norm, self.qk_norm_rope_, self.silu_mul, self.kv_gather_rope = KERNELS[self.kernels]
        # with PyTorch's kernels (the CPU), everything but attention runs in blocks of rows, so that the
        # intermediates stay in cache and are never large fresh allocations
        cpu_rows = CPU_BLOCK_ROWS if next(model.parameters()).dtype == torch.float32 else CPU_BLOCK_ROWS_LOW_PRECISION
        self.block_rows = block_rows or (cpu_rows if self.kernels == "torch" else None)
        config = model.config
        backbone = model.model
        self.embed = backbone.embed_tokens
        self.rotary = backbone.rotary_emb
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scaling = self.head_dim ** -0.5
        self.layers: list[dict[str, Any]] = []
        with torch.no_grad():
            for layer in backbone.layers:
                attn, mlp = layer.self_attn, layer.mlp
                q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
                self.layers.append({
                    "in_norm": layer.input_layernorm.weight, "in_eps": _eps(layer.input_layernorm),
                    "wqkv": _concatenate([attn.q_proj, attn.k_proj, attn.v_proj]),
                    "bqkv": _cat_biases([attn.q_proj, attn.k_proj, attn.v_proj]),
                    "qk_norm": torch.cat([q_norm.weight, k_norm.weight]) if q_norm is not None else None,
                    "qk_eps": _eps(q_norm) if q_norm is not None else 0.0,
                    "wo_t": attn.o_proj.weight.t(), "bo": attn.o_proj.bias,
                    "post_norm": layer.post_attention_layernorm.weight, "post_eps": _eps(layer.post_attention_layernorm),
                    "wgu": _concatenate([mlp.gate_proj, mlp.up_proj]), "bgu": _cat_biases([mlp.gate_proj, mlp.up_proj]),
                    "wd_t": mlp.down_proj.weight.t(), "bd": mlp.down_proj.bias,
                })

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend, last: torch.Tensor | None = None,
                attend_last: Attend | None = None, kv_rows: torch.Tensor | None = None,
                kv_rows_last: torch.Tensor | None = None) -> torch.Tensor:
        """Residual stream after the last layer (before the final norm).

        Args:
            ids, positions: [T] token ids and position ids of the flat stream (a padded batch flattened
                row by row, or a packed stream).
            attend: (q [T, H, D], k [T, KVH, D], v [T, KVH, D]) -> [T, H * D], each token attending to
                what it may see; q/k/v are strided views of one buffer.
            last, attend_last: the rows the head reads ([N], one per scored sequence) and their
                attention (q [N, H, D], k/v of the whole stream -> [N, H * D]). Given both, the last
                layer computes keys and values everywhere but everything else only at those rows, and
                the result is [N, hidden]; else [T, hidden].
            kv_rows, kv_rows_last: stream rows whose keys and values ``attend`` (``attend_last``) reads,
                in the order it reads them: given, keys and values are gathered into that layout in
                the pass that rotates the keys (a shared prefix's rows once per sequence continuing it)
                and ``attend`` gets them gathered; else it gets views of the stream's q/k/v buffer.
        """
        x = self.embed(ids)
        cos, sin = self.rotary(x[None], positions[None])
        cos, sin = cos[0].contiguous(), sin[0].contiguous()
        nq, nk = self.heads * self.head_dim, self.kv_heads * self.head_dim
        pruned = last is not None and attend_last is not None
        layers = self.layers[:-1] if pruned else self.layers
        if self.block_rows and kv_rows is None:
            x = self._blocked(x, cos, sin, attend, layers)
        else:
            gathered = None if kv_rows is None else x.new_empty(kv_rows.shape[0], 2 * nk)  # reused by every layer
            for p in layers:
                qkv = F.linear(self.rms_norm(x, p["in_norm"], p["in_eps"]), p["wqkv"], p["bqkv"])
                if kv_rows is None:
                    self.qk_norm_rope_(qkv, p["qk_norm"], cos, sin, self.heads, self.kv_heads, self.head_dim, p["qk_eps"])
                    q, k, v = self._split(qkv)
                else:
                    self.qk_norm_rope_(qkv, p["qk_norm"], cos, sin, self.heads, 0, self.head_dim, p["qk_eps"])
                    self.kv_gather_rope(qkv, kv_rows, p["qk_norm"], cos, sin, self.heads, self.kv_heads, self.head_dim, p["qk_eps"],
                                        out=gathered)
                    q, k, v = self._split(qkv)[0], *self._split_kv(gathered)
                x = self._mlp(p, x.addmm_(attend(q, k, v), p["wo_t"]))  # x is this call's own (the embedding's output)
        if not pruned:
            return x
        p = self.layers[-1]
        h = self.rms_norm(x, p["in_norm"], p["in_eps"])
        kv = F.linear(h, p["wqkv"][nq:], p["bqkv"][nq:] if p["bqkv"] is not None else None)
        q = F.linear(h.index_select(0, last), p["wqkv"][:nq], p["bqkv"][:nq] if p["bqkv"] is not None else None)
        if kv_rows_last is None:
            self.qk_norm_rope_(kv, p["qk_norm"], cos, sin, 0, self.kv_heads, self.head_dim, p["qk_eps"])
        else:
            kv = self.kv_gather_rope(kv, kv_rows_last, p["qk_norm"], cos, sin, 0, self.kv_heads, self.head_dim, p["qk_eps"])
        self.qk_norm_rope_(q, p["qk_norm"], cos.index_select(0, last), sin.index_select(0, last), self.heads, 0, self.head_dim, p["qk_eps"])
        o = attend_last(q.view(-1, self.heads, self.head_dim), *self._split_kv(kv))
        return self._mlp(p, x.index_select(0, last).addmm_(o, p["wo_t"]))

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of a q/k/v product [T, (H + 2 KVH) * D] as q [T, H, D], k and v [T, KVH, D]."""
        nq = self.heads * self.head_dim
        return (qkv[:, :nq].view(-1, self.heads, self.head_dim), *self._split_kv(qkv[:, nq:]))

    def _split_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of a key/value product [R, 2 KVH * D] as k and v [R, KVH, D]."""
        nk = self.kv_heads * self.head_dim
        return kv[:, :nk].view(-1, self.kv_heads, self.head_dim), kv[:, nk:].view(-1, self.kv_heads, self.head_dim)

    def _blocked(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend, layers: list[dict[str, Any]]) -> torch.Tensor:
        """``layers`` with everything but attention in blocks of ``block_rows`` rows, updating ``x`` in
        place: the q/k/v product into one buffer, the o and down products as in-place ``addmm_`` on
        the residual stream, gate and up as two products."""
        t = x.shape[0]
        nq, nk = self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv = x.new_empty(t, nq + 2 * nk)
        q, k, v = self._split(qkv)
        blocks = [slice(a, min(a + self.block_rows, t)) for a in range(0, t, self.block_rows)]
        for p in layers:
            inter = p["wgu"].shape[0] // 2
            bg, bu = (None, None) if p["bgu"] is None else (p["bgu"][:inter], p["bgu"][inter:])
            for rows in blocks:
                h = self.rms_norm(x[rows], p["in_norm"], p["in_eps"])
                if p["bqkv"] is None:
                    torch.mm(h, p["wqkv"].t(), out=qkv[rows])
                else:
                    torch.addmm(p["bqkv"], h, p["wqkv"].t(), out=qkv[rows])
                self.qk_norm_rope_(qkv[rows], p["qk_norm"], cos[rows], sin[rows], self.heads, self.kv_heads, self.head_dim, p["qk_eps"])
            o = attend(q, k, v)
            for rows in blocks:
                xs = x[rows]
                xs.addmm_(o[rows], p["wo_t"])
                if p["bo"] is not None:
                    xs += p["bo"]
                h = self.rms_norm(xs, p["post_norm"], p["post_eps"])
                gate = F.silu(F.linear(h, p["wgu"][:inter], bg), inplace=True)
                xs.addmm_(gate.mul_(F.linear(h, p["wgu"][inter:], bu)), p["wd_t"])
                if p["bd"] is not None:
                    xs += p["bd"]
        return x

    def _mlp(self, p: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """The rest of a layer after ``x = x + o @ Wo^T``: the o bias, then the MLP with its residual."""
        if p["bo"] is not None:
            x += p["bo"]
        gu = F.linear(self.rms_norm(x, p["post_norm"], p["post_eps"]), p["wgu"], p["bgu"])
        x.addmm_(self.silu_mul(gu), p["wd_t"])
        if p["bd"] is not None:
            x += p["bd"]
        return x


def _concatenate(linears: list[Any]) -> torch.Tensor:
    """The weights of ``linears`` stacked into one matrix; each module's weight becomes a view of its rows."""
    weight = torch.cat([m.weight.detach() for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start:start + rows], requires_grad=False)
        start += rows
    return weight


def _cat_biases(linears: list[Any]) -> torch.Tensor | None:
    """The concatenated biases of ``linears`` (zeros for those without one), or None if none has one."""
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else m.weight.new_zeros(m.weight.shape[0]) for b, m in zip(biases, linears)])


def _eps(norm: Any) -> float:
    """The epsilon of a transformers RMSNorm module (named variance_epsilon or eps)."""
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
