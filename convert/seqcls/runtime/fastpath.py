"""A scoring-only forward for the Llama family (Llama, Mistral, Qwen2, Qwen3), on transformers' weights.

The engine's general path runs transformers' own decoder layers. For the architectures most rerankers
use, this module runs the same arithmetic with three differences that only scoring allows:

* the weights of q/k/v and of gate/up are concatenated once (one matrix product each instead of
  three and two; transformers' modules keep working on views of the same storage, so no memory is
  doubled);
* the last decoder layer computes keys and values for every token but queries, attention output,
  ``o_proj`` and the MLP only for each scored sequence's last token, the one the head reads;
* on CUDA each layer is two compiled functions around the attention call, laid out so that the
  residual add of one layer is fused with the norm of the next.

Every other operation is the one transformers performs, in the same order and dtype, so in float32
the scores equal transformers' within rounding (the tests hold it to 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def supported(model: Any) -> str | None:
    """None when this module can run ``model``, else the reason it cannot."""
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
    first = backbone.layers[0]
    attn, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    needed = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")]
    if any(getattr(owner, name, None) is None for owner, name in needed):
        return "the decoder layers are not laid out as in Llama"
    return None


@dataclass
class Layer:
    """One decoder layer's weights (views of the model's parameters)."""

    in_norm: torch.Tensor
    post_norm: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    wgu: torch.Tensor
    bgu: torch.Tensor | None
    wd: torch.Tensor
    bd: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


def _fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of ``linears`` and re-point each module at its slice."""
    weight = torch.cat([m.weight.detach() for m in linears])
    biases = [m.bias for m in linears]
    bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
    if any(b is not None for b in biases) and bias is None:
        raise ValueError("some projections have a bias and some do not")
    start = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start:start + n], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[start:start + n], requires_grad=False)
        start += n
    return weight, bias


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: normalise in float32, cast back, then scale."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w, b)


def attention_inputs(h: torch.Tensor, wqkv: torch.Tensor, bqkv: torch.Tensor | None, q_norm: torch.Tensor | None,
                     k_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                     head_dim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normed hidden states [T, hidden] -> rotated queries [T, H, D], keys [T, KVH, D], values [T, KVH, D]."""
    qkv = _linear(h, wqkv, bqkv)
    nq, nk = heads * head_dim, kv_heads * head_dim
    q = qkv[:, :nq].reshape(-1, heads, head_dim)
    k = qkv[:, nq:nq + nk].reshape(-1, kv_heads, head_dim)
    v = qkv[:, nq + nk:].reshape(-1, kv_heads, head_dim)
    if q_norm is not None:
        q = rms_norm(q, q_norm, eps)
        k = rms_norm(k, k_norm, eps)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def last_attention_inputs(h: torch.Tensor, last: torch.Tensor, wqkv: torch.Tensor, bqkv: torch.Tensor | None,
                          q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                          heads: int, kv_heads: int, head_dim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``attention_inputs`` for the last layer: queries [N, H, D] of the rows ``last`` only, keys and
    values of every row."""
    nq = heads * head_dim
    kv = _linear(h, wqkv[nq:], bqkv[nq:] if bqkv is not None else None)
    q = _linear(h.index_select(0, last), wqkv[:nq], bqkv[:nq] if bqkv is not None else None).reshape(-1, heads, head_dim)
    k = kv[:, : kv_heads * head_dim].reshape(-1, kv_heads, head_dim)
    v = kv[:, kv_heads * head_dim:].reshape(-1, kv_heads, head_dim)
    if q_norm is not None:
        q = rms_norm(q, q_norm, eps)
        k = rms_norm(k, k_norm, eps)
    q = _rope(q, cos.index_select(0, last)[:, None, :], sin.index_select(0, last)[:, None, :])
    return q, _rope(k, cos[:, None, :], sin[:, None, :]), v


def attention_outputs(x: torch.Tensor, o: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor | None, post_norm: torch.Tensor,
                      wgu: torch.Tensor, bgu: torch.Tensor | None, wd: torch.Tensor, bd: torch.Tensor | None,
                      next_norm: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual stream x [T, hidden] and attention output o [T, H*D] -> (new residual stream, the next
    layer's normed input, or the new stream again after the last layer)."""
    x = x + _linear(o, wo, bo)
    gu = _linear(rms_norm(x, post_norm, eps), wgu, bgu)
    inter = gu.shape[-1] // 2
    x = x + _linear(F.silu(gu[:, :inter]) * gu[:, inter:], wd, bd)
    return x, (rms_norm(x, next_norm, eps) if next_norm is not None else x)


class FastDecoder:
    """The decoder stack of a Llama-family ``*ForSequenceClassification`` model, for scoring.

    Args:
        model: the loaded transformers model (its q/k/v and gate/up weights are re-pointed at fused
            tensors; it keeps working).
        compile: torch.compile the two per-layer functions (dynamic shapes).
    """

    def __init__(self, model: Any, compile: bool = False):
        reason = supported(model)
        if reason:
            raise ValueError(f"the fast path cannot run this model: {reason}")
        config = model.config
        backbone = model.model
        self.embed = backbone.embed_tokens
        self.rotary = backbone.rotary_emb
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(getattr(config, "rms_norm_eps", 1e-6))
        self.scaling = self.head_dim ** -0.5
        self.layers: list[Layer] = []
        for layer in backbone.layers:
            attn, mlp = layer.self_attn, layer.mlp
            wqkv, bqkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            wgu, bgu = _fuse([mlp.gate_proj, mlp.up_proj])
            q_norm = getattr(attn, "q_norm", None)
            k_norm = getattr(attn, "k_norm", None)
            self.layers.append(Layer(
                in_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                wqkv=wqkv, bqkv=bqkv, wo=attn.o_proj.weight, bo=attn.o_proj.bias, wgu=wgu, bgu=bgu,
                wd=mlp.down_proj.weight, bd=mlp.down_proj.bias,
                q_norm=q_norm.weight if q_norm is not None else None, k_norm=k_norm.weight if k_norm is not None else None,
            ))
        # the shape constants are closed over, so that compiled kernels see them as constants and only
        # the token count is symbolic (dynamic=None: static first, then whatever dimension varies)
        heads, kv_heads, head_dim, eps = self.heads, self.kv_heads, self.head_dim, self.eps

        def inputs(h, wqkv, bqkv, q_norm, k_norm, cos, sin):
            return attention_inputs(h, wqkv, bqkv, q_norm, k_norm, cos, sin, heads, kv_heads, head_dim, eps)

        def last_inputs(h, last, wqkv, bqkv, q_norm, k_norm, cos, sin):
            return last_attention_inputs(h, last, wqkv, bqkv, q_norm, k_norm, cos, sin, heads, kv_heads, head_dim, eps)

        def outputs(x, o, wo, bo, post_norm, wgu, bgu, wd, bd, next_norm):
            return attention_outputs(x, o, wo, bo, post_norm, wgu, bgu, wd, bd, next_norm, eps)

        self.inputs: Callable[..., Any] = inputs
        self.last_inputs: Callable[..., Any] = last_inputs
        self.outputs: Callable[..., Any] = outputs
        self.compiled = False
        if compile:
            self.inputs = torch.compile(inputs, dynamic=None)
            self.last_inputs = torch.compile(last_inputs, dynamic=None)
            self.outputs = torch.compile(outputs, dynamic=None)
            self.compiled = True

    def _qkv(self, layer: Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return self.inputs(h, layer.wqkv, layer.bqkv, layer.q_norm, layer.k_norm, cos, sin)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, last: torch.Tensor,
                attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                attend_last: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Hidden states (before the final norm) of the rows ``last`` of the flat token stream ``ids``.

        Args:
            ids, positions: [T] token ids and position ids.
            last: [N] stream rows whose hidden state is wanted (each scored sequence's last token).
            attend: (q [T, H, D], k [T, KVH, D], v [T, KVH, D]) -> [T, H, D], each token attending
                to what it may see.
            attend_last: (q [N, H, D], k, v [T, KVH, D]) -> [N, H, D], the rows ``last`` attending.
        """
        x = self.embed(ids)
        cos, sin = self.rotary(x[None], positions[None])
        cos, sin = cos[0], sin[0]
        h = rms_norm(x, self.layers[0].in_norm, self.eps)
        for i, layer in enumerate(self.layers[:-1]):
            q, k, v = self._qkv(layer, h, cos, sin)
            o = attend(q, k, v).reshape(q.shape[0], -1)
            x, h = self.outputs(x, o, layer.wo, layer.bo, layer.post_norm, layer.wgu, layer.bgu, layer.wd, layer.bd,
                                self.layers[i + 1].in_norm)
        layer = self.layers[-1]
        # last layer: keys and values everywhere, everything else only where the head reads
        q, k, v = self.last_inputs(h, last, layer.wqkv, layer.bqkv, layer.q_norm, layer.k_norm, cos, sin)
        o = attend_last(q, k, v).reshape(last.shape[0], -1)
        x, _ = self.outputs(x.index_select(0, last), o, layer.wo, layer.bo, layer.post_norm, layer.wgu, layer.bgu,
                            layer.wd, layer.bd, None)
        return x
