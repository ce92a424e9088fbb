"""The scoring engine: token-budget scheduling, packed or padded forward passes, shared prefixes.

Loads the model with transformers (AutoModelForSequenceClassification). Llama-family models run
through ``fused.FusedDecoder`` (bf16/fp16 on CUDA: cuBLAS products and three Triton kernels a layer; on
CPU: the same layer with PyTorch's ops, in row blocks; the last layer only at the rows the head reads);
everything else runs transformers' own decoder layers (compiled on CUDA). Either way, in two layouts:

* ``packed`` (wherever the architecture uses transformers' attention interface): the sequences of a
  pack are concatenated into one stream with per-sequence position ids and attend only to themselves
  (``attention.packed_attention``: flash varlen on CUDA, exact per-sequence SDPA elsewhere); no
  padding. Pairs that share a prompt prefix (system prompt + instruction + query) carry it once per
  pack, as a sequence of its own, and attend to its keys and values. On CUDA, prefix-free sequences
  go instead as length-sorted right-padded batches with dense (cuDNN/flash) attention, which runs
  short sequences several times faster than varlen flash; packs too ragged for that stay packed.
* ``padded``: length-sorted, right-padded batches through the stock backbone (the fallback for
  architectures the packed path cannot drive).

Everywhere the final norm and the score head see only each sequence's last hidden state, and the
head runs in float32. Several devices: one replica each, packs handed out by worker threads. On the
CPU, several worker threads share the one replica, each running its own packs with one intra-op
thread: a pass's small ops and per-sequence attention then run side by side instead of making both
cores wait on each other.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .attention import (ATTN_NAME, DENSE_NAME, PackContext, active, attend_packed, attend_packed_last, flash_supported, ranges, register,
                        to_device)

BACKENDS = ("auto", "packed", "padded")
DEFAULT_BUDGET = {("cuda", "packed"): 65536, ("cuda", "padded"): 65536, ("cpu", "packed"): 4096, ("cpu", "padded"): 4096}
MIN_PREFIX = 8
_LAUNCH_LOCK = threading.RLock()
_CPU_THREADS_LOCK = threading.Lock()  # CPU worker runs change torch's (process-wide) intra-op thread count
MAX_PADDING = 0.15  # padded (dense-attention) batches only when padding is at most this share of the batch


@dataclass
class Pack:
    """One forward pass worth of sequences.

    ``seqs[i]`` holds the token ids of sequence ``indices[i]`` after its shared prefix
    ``prefixes[prefix_of[i]]`` (``prefix_of[i] == -1``: no prefix, the whole sequence). ``layout`` is
    ``packed`` (one flat stream, varlen attention) or ``padded`` (a right-padded batch of similar
    lengths, dense attention; no prefixes).
    """

    indices: list[int]
    seqs: list[list[int]]
    prefixes: list[tuple[int, ...]] = field(default_factory=list)
    prefix_of: list[int] = field(default_factory=list)
    layout: str = "packed"

    def __post_init__(self) -> None:
        if not self.prefix_of:
            self.prefix_of = [-1] * len(self.seqs)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs) + sum(len(p) for p in self.prefixes)

    def full(self, i: int) -> list[int]:
        """The whole token ids of the pack's ``i``-th sequence (prefix included)."""
        j = self.prefix_of[i]
        return list(self.prefixes[j]) + list(self.seqs[i]) if j >= 0 else list(self.seqs[i])


@dataclass
class PrefixGroup:
    """Sequences (by index) that continue the same prefix of ``length`` tokens."""

    indices: list[int]
    length: int = 0


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of ``seqs`` (lists or tuples of ids)."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n:  # blocks of 32 compared as slices (C speed), then the differing block token by token
            j = min(i + 32, n)
            if s[i:j] != first[i:j]:
                while s[i] == first[i]:
                    i += 1
                n = i
                break
            i = j
        if n == 0:
            break
    return n


def find_prefix_groups(sequences: Sequence[Sequence[int]], min_prefix: int = MIN_PREFIX) -> list[PrefixGroup]:
    """Split sequences into groups that share a token prefix worth caching, maximising tokens saved.

    Sequences are sorted; neighbours' common prefixes define runs. A run is either scored as one group
    (every member skips the run's common prefix) or split where its neighbours share least, whichever
    saves more tokens: with several queries of many documents each, every query's documents become one
    group (system prompt + instruction + query shared); with one document per query, all pairs share
    the system prompt. The prefix stays one token short of the group's shortest sequence; groups of one,
    or with a prefix under ``min_prefix`` tokens, get length 0 (no caching).
    """
    n = len(sequences)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: sequences[i])
    adjacent: list[int] = []
    for j in range(n - 1):
        a, b = sequences[order[j]], sequences[order[j + 1]]
        h = adjacent[-1] if adjacent else 0  # neighbours in a group share as much as the previous pair: check that first
        if 0 < h < min(len(a), len(b)) and a[h] != b[h] and a[:h] == b[:h]:
            adjacent.append(h)
        else:
            adjacent.append(common_prefix_length([a, b]))
    groups: list[PrefixGroup] = []

    def best(lo: int, hi: int, depth: int) -> tuple[int, list[PrefixGroup]]:
        members = [order[k] for k in range(lo, hi + 1)]
        if lo == hi:
            return 0, [PrefixGroup(members, 0)]
        low = min(adjacent[lo:hi])
        p = min(low, min(len(sequences[i]) for i in members) - 1)
        p = p if p >= min_prefix else 0
        whole = (hi - lo) * p
        cuts = [k for k in range(lo, hi) if adjacent[k] == low]
        if depth > 64 or len(cuts) == hi - lo:
            return whole, [PrefixGroup(members, p)]
        saving, parts, start = 0, [], lo
        for k in cuts + [hi]:
            s, g = best(start, k, depth + 1)
            saving += s
            parts += g
            start = k + 1
        if saving > whole:
            return saving, parts
        return whole, [PrefixGroup(members, p)]

    start = 0
    for j in range(n):
        if j == n - 1 or adjacent[j] < min_prefix:
            groups += best(start, j, 0)[1]
            start = j + 1
    return groups


def plan_packs(sequences: Sequence[Sequence[int]], groups: Sequence[PrefixGroup], budget: int, padded: bool,
               padded_loose: bool = False) -> list[Pack]:
    """Length-sorted packs under a token budget.

    Packed: the tokens of a pack (prefixes counted once) sum to at most ``budget``; sequences of
    several prefix groups and prefix-free ones share packs, each group's prefix computed once per pack
    it appears in. Padded: batch size times the longest sequence stays within ``budget`` (prefixes are
    not used). ``padded_loose`` makes the prefix-free sequences padded batches (dense attention), kept
    only where padding stays under ``MAX_PADDING``. A sequence longer than the budget gets a pack of
    its own.
    """
    if padded:
        return _fill_padded(sequences, [i for g in groups for i in g.indices], budget)
    packs: list[Pack] = []
    loose = [i for g in groups if not g.length for i in g.indices]
    shared = [g for g in groups if g.length]
    if padded_loose:
        for pack in _fill_padded(sequences, loose, budget):
            lengths = [len(x) for x in pack.seqs]
            if sum(lengths) >= (1 - MAX_PADDING) * len(lengths) * max(lengths):
                packs.append(pack)
            else:  # too ragged for a padded batch: varlen attention wastes less
                shared.append(PrefixGroup(pack.indices, 0))
        loose = []
    items: list[tuple[int, int]] = []  # (group number, sequence index), longest first within a group
    for number, group in enumerate(shared):
        items += [(number, i) for i in sorted(group.indices, key=lambda i: len(sequences[i]), reverse=True)]
    items += [(-1, i) for i in sorted(loose, key=lambda i: len(sequences[i]), reverse=True)]
    current: Pack | None = None
    slot: dict[int, int] = {}
    used = 0  # current.tokens, kept as a running sum (the property would re-add the whole pack per sequence)
    for number, i in items:
        p = shared[number].length if number >= 0 else 0
        cost = len(sequences[i]) - p + (p if p and number not in slot else 0)
        if current is None or (current.seqs and used + cost > budget):
            current = Pack([], [], layout="packed")
            packs.append(current)
            slot = {}
            used = 0
            cost = len(sequences[i])  # a new pack carries the prefix again
        if p and number not in slot:
            slot[number] = len(current.prefixes)
            current.prefixes.append(tuple(sequences[i][:p]))
        current.indices.append(i)
        current.seqs.append(sequences[i][p:] if p else sequences[i])
        current.prefix_of.append(slot[number] if p else -1)
        used += cost
    return packs


def _fill_padded(sequences: Sequence[Sequence[int]], indices: list[int], budget: int) -> list[Pack]:
    """Right-padded batches of length-sorted sequences, batch size x longest <= budget."""
    packs: list[Pack] = []
    current: list[int] = []
    longest = 0
    for i in sorted(indices, key=lambda i: len(sequences[i]), reverse=True):
        n = len(sequences[i])
        if current and (len(current) + 1) * max(longest, n) > budget:
            packs.append(Pack(current, [sequences[j] for j in current], layout="padded"))
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        packs.append(Pack(current, [sequences[j] for j in current], layout="padded"))
    return packs


# ---------------------------------------------------------------- devices and dtypes


def resolve_devices(device: str | Sequence[str] = "auto") -> list[torch.device]:
    """'auto' -> every visible GPU, else CPU; 'cuda' -> every visible GPU; 'cuda:1', 'cpu' as given."""
    if not isinstance(device, str):
        devices = [torch.device(d) for d in device]
        if not devices:
            raise UsageError("The device list is empty; pass auto, cpu, cuda or cuda:N.")
        return devices
    text = device.strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return [torch.device("cpu")]
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"Device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto.")
        if text == "cuda":
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        try:
            dev = torch.device(text)
        except RuntimeError as exc:
            raise UsageError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"Device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) are visible.")
        return [dev]
    raise UsageError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.")


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on GPU, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    text = str(dtype).lower()
    if text == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if text not in _DTYPES:
        raise UsageError(f"Unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.")
    return _DTYPES[text]


# ---------------------------------------------------------------- one device


def _load_model(path: str, device: torch.device, dtype: torch.dtype, attn: str | None) -> Any:
    import transformers
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn is not None:
        kwargs["attn_implementation"] = attn
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except Exception as exc:  # transformers raises many types for folders it cannot load
        raise UsageError(
            f"transformers {transformers.__version__} cannot load {path} as a sequence-classification model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); upgrade transformers or re-convert the model."
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model.to(device).eval()


def packed_capable(model: Any) -> bool:
    """Whether the packed path can drive this model: attention through the interface, a backbone with
    ``layers`` and a ``score`` head."""
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return bool(getattr(model, "_supports_attention_backend", False)) and backbone is not None and hasattr(backbone, "layers") and hasattr(model, "score")


class DeviceEngine:
    """One model replica on one device running packs.

    Args:
        path: the converted folder.
        device: a torch device.
        dtype: the compute dtype.
        backend: ``packed`` or ``padded`` (``auto``: packed where the architecture allows it).
        compile: compile transformers' decoder layers with ``torch.compile`` where the fused decoder does not
            run (``auto``: on CUDA when Triton is present).
        fused: run Llama-family models through ``fused.FusedDecoder`` (``auto``: wherever it applies, i.e.
            on CPU and in bf16/fp16 on CUDA with Triton; False: transformers' decoder layers, compiled
            where ``compile`` says).
    """

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype, backend: str = "auto", compile: bool | str = "auto",
                 fused: bool | str = "auto"):
        requested = backend
        if backend not in BACKENDS:
            raise UsageError(f"Unknown backend {backend!r}; use auto, packed or padded.")
        self.device = device
        self.dtype = dtype
        model = None
        if backend in ("auto", "packed"):
            model = _load_model(path, device, dtype, register())
            if not packed_capable(model):
                if backend == "packed":
                    raise UsageError(f"{type(model).__name__} cannot run on the packed path; use backend='padded'.")
                model = None
        if model is None:
            model = _load_model(path, device, dtype, None)
            self.backend = "padded"
        else:
            self.backend = "packed"
        self.model = model
        self.config = model.config
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
        self.vocab_size = int(text_config.vocab_size)
        self.backbone = getattr(model, model.base_model_prefix)
        self.final_norm = getattr(self.backbone, "norm", None)
        if self.final_norm is not None:
            self.backbone.norm = torch.nn.Identity()  # the norm runs on last tokens only, in _head
        score = model.score
        self.head_weight = score.weight.detach().float()
        bias = getattr(score, "bias", None)
        self.head_bias = bias.detach().float() if bias is not None else None
        self.num_labels = int(self.head_weight.shape[0])
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        self.use_flash = self.backend == "packed" and flash_supported(device, dtype, head_dim)
        self.supports_prefix = self.backend == "packed"
        self.softcap = getattr(text_config, "attn_logit_softcapping", None)
        window = getattr(text_config, "sliding_window", None)
        layer_types = getattr(text_config, "layer_types", None)
        self.window = int(window) if window and (not layer_types or "sliding_attention" in layer_types) else None
        self.compiled = False
        self.fused = None
        if self.backend == "packed" and fused is not False:
            from . import fused as fused_module

            reason = fused_module.supported(model, device, dtype) or ("soft-capped attention" if self.softcap is not None else None)
            if reason is None:
                self.fused = fused_module.FusedDecoder(model)
            elif fused is True:
                raise UsageError(f"The fused decoder cannot run {type(model).__name__}: {reason}; use fused='auto' or False.")
        # query rows per block of the Triton prefix-attention kernel (0: packs attend through varlen flash)
        self.prefix_blocks = 0
        if self.fused is not None and self.fused.kernels == "triton" and self.use_flash:
            self.prefix_blocks = fused_module.ATTENTION_BLOCK_M
        # On CUDA without that kernel, prefix-free sequences run as length-sorted right-padded batches
        # with dense attention (cuDNN/flash SDPA, several times faster per FLOP than varlen flash on
        # short sequences); packs that share a prefix stay packed. With the kernel every pack is packed
        # (it beats the padded cuDNN batches). backend="packed" forces packing throughout.
        self.dense = (self.backend == "packed" and requested == "auto" and device.type == "cuda" and self.softcap is None
                      and not self.prefix_blocks)
        if compile == "auto":
            compile = device.type == "cuda" and _has_triton()
        if compile and self.backend == "packed" and self.fused is None:
            self._compile_layers()

    def _compile_layers(self) -> None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        layers = self.backbone.layers
        for i in range(len(layers)):
            layers[i] = torch.compile(layers[i], dynamic=True)
        self.compiled = True

    # -- forward passes

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise UsageError(f"Token id {bad} is outside this model's vocabulary (0..{self.vocab_size - 1}); tokenise with the model's own tokenizer.")

    def _head(self, last_hidden: torch.Tensor) -> torch.Tensor:
        if self.final_norm is not None:
            last_hidden = self.final_norm(last_hidden)
        return F.linear(last_hidden.float(), self.head_weight, self.head_bias)

    def _stream(self, seqs: Sequence[Sequence[int]], offsets: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        lengths = [len(s) for s in seqs]
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=sum(lengths))
        self._check_ids(flat)
        both = to_device(np.stack([flat, ranges(offsets, lengths)]), self.device)  # ids and positions in one copy
        return both[0], both[1], lengths

    def forward_packed(self, seqs: Sequence[Sequence[int]], prefixes: Sequence[Sequence[int]] = (),
                       prefix_of: Sequence[int] | None = None) -> torch.Tensor:
        """Logits [len(seqs), num_labels] (float32) of one packed pass. ``seqs[i]`` continues
        ``prefixes[prefix_of[i]]`` (-1: none); each prefix is computed once, as a sequence of the stream."""
        prefix_of = list(prefix_of) if prefix_of is not None else [-1] * len(seqs)
        stream = [*prefixes, *seqs]
        spans, start = [], 0
        for p in prefixes:
            spans.append((start, len(p)))
            start += len(p)
        seq_spans = [spans[j] if j >= 0 else (0, 0) for j in prefix_of]
        offsets = [0] * len(prefixes) + [n for _, n in seq_spans]
        ids, pos, lengths = self._stream(stream, offsets)
        # packs attend through the Triton attention kernel (shared prefixes' keys/values read in
        # place), except where a sliding window cuts a sequence's keys
        blocks = self.prefix_blocks
        if blocks and self.window is not None and max(len(s) + n for s, (_, n) in zip(seqs, seq_spans)) > self.window:
            blocks = 0
        ctx = PackContext.build(lengths, self.device, use_flash=self.use_flash, prefixes=[(0, 0)] * len(prefixes) + seq_spans,
                                scored_from=len(prefixes), blocks=blocks)
        last = ctx.last_rows
        if self.fused is not None:
            scaling, window, flash = self.fused.scaling, self.window, self.use_flash
            buffer = None if flash and not blocks else torch.empty(ids.shape[0], self.fused.heads, self.fused.head_dim,
                                                                   device=self.device, dtype=self.dtype)

            # on the flash path, the fused decoder gathers keys/values into the kernel's layout as it
            # rotates them, unless the prefix kernel reads them in place
            def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return attend_packed(ctx, q, k, v, scaling, window, out=buffer, gathered=ctx.kv_index is not None).flatten(1)

            def attend_last(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return attend_packed_last(ctx, q, k, v, scaling, window, gathered=flash).flatten(1)

            # the row indices exist only on the flash path (the per-sequence path reads the stream's own rows)
            hidden = self.fused.forward(ids, pos, attend, last, attend_last,  # last layer at the head's rows only
                                        kv_rows=ctx.kv_index, kv_rows_last=ctx.last_kv_index)
            return self._head(hidden)
        with active(ctx):
            hidden = self.backbone(input_ids=ids[None], position_ids=pos[None], use_cache=False).last_hidden_state[0]
        return self._head(hidden.index_select(0, last))

    def forward_padded(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits of one right-padded batch (causal attention never lets real tokens see the padding)."""
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        batch = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        for row, s in enumerate(seqs):
            batch[row, : len(s)] = s
        self._check_ids(batch)
        ends = to_device(np.asarray(lengths, dtype=np.int64) - 1, self.device)
        if self.fused is not None:
            return self._head(self._fused_padded(batch, ends))
        with self._dense_attention():
            hidden = self.backbone(input_ids=to_device(batch, self.device), use_cache=False).last_hidden_state
        return self._head(hidden[torch.arange(len(seqs), device=self.device), ends])

    def _fused_padded(self, batch: np.ndarray, ends: torch.Tensor) -> torch.Tensor:
        """A right-padded batch through the fused decoder: the matrix products on the flattened batch,
        dense causal attention per row (padding comes after every real token, so no real token sees
        it); the last layer only at each row's last token (``ends``). Returns [rows, hidden]."""
        rows, width = batch.shape
        ids = to_device(batch.reshape(-1), self.device)
        pos = torch.arange(width, device=self.device).repeat(rows)
        scaling = self.fused.scaling
        keep = (torch.arange(width, device=self.device)[None, :] <= ends[:, None])[:, None, None, :]  # [B, 1, 1, W]

        def split(t: torch.Tensor) -> torch.Tensor:  # [B * W, heads, D] -> [B, heads, W, D]
            return t.view(rows, width, t.shape[1], t.shape[2]).transpose(1, 2)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True, scale=scaling,
                                                 enable_gqa=q.shape[1] != k.shape[1])
            return out.transpose(1, 2).reshape(rows * width, -1)

        def attend_last(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # q [B, H, D]
            out = F.scaled_dot_product_attention(q[:, :, None, :], split(k), split(v), attn_mask=keep, scale=scaling,
                                                 enable_gqa=q.shape[1] != k.shape[1])
            return out[:, :, 0, :].reshape(rows, -1)

        last = torch.arange(rows, device=self.device) * width + ends
        with self._dense_attention():
            return self.fused.forward(ids, pos, attend, last, attend_last)

    @contextmanager
    def _dense_attention(self) -> Iterator[None]:
        """Run a padded batch on a packed-path model: transformers' own SDPA attention (no graph break
        under torch.compile), cuDNN first on CUDA."""
        if self.backend != "packed":
            yield
            return
        config = self.config
        config._attn_implementation = DENSE_NAME
        try:
            if self.device.type == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
                try:
                    context = sdpa_kernel(order, set_priority=True)
                except TypeError:  # older torch: no priority order
                    context = sdpa_kernel(order)
                with context:
                    yield
            else:
                yield
        finally:
            config._attn_implementation = ATTN_NAME

    def launch(self, pack: Pack) -> torch.Tensor:
        """Queue one pack's forward pass; returns its logits on the device (not yet synchronised)."""
        if self.backend == "packed" and (
            pack.layout == "packed" or self.softcap is not None
            or (self.window is not None and max(map(len, pack.seqs)) > self.window)
        ):
            return self.forward_packed(pack.seqs, pack.prefixes, pack.prefix_of)
        seqs = [pack.full(i) for i in range(len(pack.seqs))] if pack.prefixes else pack.seqs
        return self.forward_padded(seqs)

    def run_pack(self, pack: Pack) -> np.ndarray:
        with torch.inference_mode():
            return self.launch(pack).cpu().numpy()

    def run_stream(self, take: Callable[[], Pack | None], deliver: Callable[[Pack, np.ndarray], None], depth: int = 2) -> None:
        """Run packs from ``take()`` until it returns None, keeping up to ``depth`` packs queued on the
        device so that preparing the next pack overlaps the current one's GPU work."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        inflight: deque[tuple[Pack, torch.Tensor]] = deque()
        with torch.inference_mode():
            while True:
                pack = take()
                if pack is None:
                    break
                # torch.compile's tracing is process-wide: one thread traces/launches at a time
                with _LAUNCH_LOCK if self.compiled else nullcontext():
                    logits = self.launch(pack)
                inflight.append((pack, logits))
                if len(inflight) >= depth:
                    done, logits = inflight.popleft()
                    deliver(done, logits.cpu().numpy())
            while inflight:
                done, logits = inflight.popleft()
                deliver(done, logits.cpu().numpy())


def _in_threads(jobs: Sequence[Callable[[], None]]) -> None:
    """Run each job on a thread of its own until all return; re-raises the first error."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- all devices


class Engine:
    """Model replicas on one or more devices (data parallel over packs).

    Args:
        path: the converted folder.
        devices: torch devices (one replica each).
        dtype: compute dtype.
        backend, compile, fused: see DeviceEngine.
        batch_tokens: token budget of one pack (default: 64k on GPU, 4k on CPU).
        cpu_workers: on the CPU, worker threads running packs side by side, sharing torch's intra-op
            threads between them (``auto``: one per intra-op thread, ``torch.get_num_threads()`` at
            each run; 1: one worker using all of them).
    """

    def __init__(self, path: str, devices: list[torch.device], dtype: torch.dtype, backend: str = "auto",
                 compile: bool | str = "auto", batch_tokens: int | None = None, fused: bool | str = "auto",
                 cpu_workers: int | str = "auto"):
        if cpu_workers != "auto" and (isinstance(cpu_workers, bool) or not isinstance(cpu_workers, int) or cpu_workers < 1):
            raise UsageError(f"cpu_workers must be a positive number of threads or 'auto', not {cpu_workers!r}.")
        self.cpu_workers = cpu_workers
        self.replicas = [DeviceEngine(path, d, dtype, backend, compile, fused) for d in devices]
        first = self.replicas[0]
        self.backend = first.backend
        self.num_labels = first.num_labels
        self.dtype = dtype
        self.devices = devices
        key = ("cuda" if devices[0].type == "cuda" else "cpu", self.backend)
        self.batch_tokens = int(batch_tokens or DEFAULT_BUDGET[key])
        if self.batch_tokens < 1:
            raise UsageError(f"batch_tokens must be positive, not {batch_tokens}.")

    @property
    def supports_prefix(self) -> bool:
        return self.replicas[0].supports_prefix

    def plan(self, sequences: Sequence[Sequence[int]], groups: Sequence[PrefixGroup]) -> list[Pack]:
        """Packs under the token budget. With several CPU workers, a pack count that would leave a
        worker idle at the end (say 9 packs for 2 workers) is replanned into equal smaller packs (10)."""
        if not self.supports_prefix:
            groups = [PrefixGroup(g.indices, 0) for g in groups]

        def plan(budget: int) -> list[Pack]:
            return plan_packs(sequences, groups, budget, padded=self.backend == "padded", padded_loose=self.replicas[0].dense)

        packs = plan(self.batch_tokens)
        workers = self.cpu_worker_count(len(packs))
        if workers > 1 and len(packs) % workers:
            slots = -(-len(packs) // workers) * workers
            even = -(-sum(p.tokens for p in packs) // slots)
            for slack in (1.0, 1.02, 1.05, 1.1):  # packs never fill their budget exactly
                budget = min(self.batch_tokens, int(even * slack))
                repacked = plan(budget)
                if len(repacked) <= slots:
                    return repacked
        return packs

    def cpu_worker_count(self, packs: int) -> int:
        """Worker threads that run ``packs`` packs on the CPU (1: one pack at a time on all of torch's threads)."""
        if len(self.replicas) > 1 or self.replicas[0].device.type != "cpu" or packs < 2:
            return 1
        return min(packs, torch.get_num_threads() if self.cpu_workers == "auto" else int(self.cpu_workers))

    def run(self, packs: Sequence[Pack], count: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Logits [count, num_labels] (float32) for the sequences the packs cover; with several replicas
        each worker thread takes the next pack as soon as its device has room."""
        out = np.zeros((count, self.num_labels), dtype=np.float32)
        lock = threading.Lock()
        queue = deque(packs)

        def take() -> Pack | None:
            with lock:
                return queue.popleft() if queue else None

        def deliver(pack: Pack, logits: np.ndarray) -> None:
            with lock:
                out[pack.indices] = logits
                if progress:
                    progress(len(pack.indices))

        replicas = self.replicas[: max(1, min(len(self.replicas), len(packs)))]
        if self.cpu_worker_count(len(packs)) > 1:
            with _CPU_THREADS_LOCK:
                threads = torch.get_num_threads()
                workers = self.cpu_worker_count(len(packs))
                if workers > 1:
                    torch.set_num_threads(max(1, threads // workers))  # read by each new worker thread as it starts
                    try:
                        _in_threads([lambda: replicas[0].run_stream(take, deliver)] * workers)
                    finally:
                        torch.set_num_threads(threads)
                    return out
        if len(replicas) == 1:
            replicas[0].run_stream(take, deliver)
            return out
        _in_threads([lambda r=r: r.run_stream(take, deliver) for r in replicas])
        return out
