"""The scoring engine: token-budget scheduling, packed or padded forward passes, shared prefixes.

Two paths over transformers' own modeling code (loaded with AutoModelForSequenceClassification):

* ``packed`` (default where the architecture uses transformers' attention interface): the sequences
  of a batch are concatenated into one stream with per-sequence position ids and attend only to
  themselves (``attention.packed_attention``: flash varlen on CUDA, exact per-sequence SDPA
  elsewhere); no padding. A shared prefix (system prompt + instruction + query of a rerank) is run
  once, its keys/values cached, and each document attends to them.
* ``padded``: length-sorted, right-padded batches through the stock backbone (the fallback for
  architectures the packed path cannot drive).

In both, the final norm and the score head see only each sequence's last hidden state, and the head
is applied in float32. Several GPUs: one engine per device, packs handed out by worker threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .attention import PackContext, active, flash_supported, register

BACKENDS = ("auto", "packed", "padded")
DEFAULT_BUDGET = {("cuda", "packed"): 65536, ("cuda", "padded"): 65536, ("cpu", "packed"): 4096, ("cpu", "padded"): 4096}
MIN_PREFIX = 8


@dataclass
class Pack:
    """One forward pass worth of sequences (token ids after the shared prefix, if any)."""

    indices: list[int]
    seqs: list[list[int]]
    prefix: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs)


@dataclass
class PrefixGroup:
    """Sequences (by index) that continue the same prefix of ``length`` tokens."""

    indices: list[int]
    length: int = 0


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of ``seqs``."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        limit = min(n, len(s))
        while i < limit and s[i] == first[i]:
            i += 1
        n = i
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
    adjacent = [common_prefix_length([sequences[order[j]], sequences[order[j + 1]]]) for j in range(n - 1)]
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


def plan_packs(sequences: Sequence[Sequence[int]], groups: Sequence[PrefixGroup], budget: int, padded: bool) -> list[Pack]:
    """Length-sorted packs under a token budget.

    Packed: the tokens of a pack sum to at most ``budget``. Padded: batch size times the longest
    sequence stays within ``budget``. A sequence longer than the budget gets a pack of its own.
    Sequences with a shared prefix are packed with their group only (the prefix is cached per pack).
    """
    packs: list[Pack] = []
    loose: list[int] = []
    for group in groups:
        if group.length:
            packs.extend(_fill(sequences, group.indices, budget, padded, group.length))
        else:
            loose.extend(group.indices)
    packs.extend(_fill(sequences, loose, budget, padded, 0))
    return packs


def _fill(sequences: Sequence[Sequence[int]], indices: list[int], budget: int, padded: bool, prefix_len: int) -> list[Pack]:
    if not indices:
        return []
    order = sorted(indices, key=lambda i: len(sequences[i]), reverse=True)
    prefix = tuple(sequences[order[0]][:prefix_len]) if prefix_len else ()
    packs: list[Pack] = []
    current: list[int] = []
    used = 0
    longest = 0
    for i in order:
        n = len(sequences[i]) - prefix_len
        cost = (len(current) + 1) * max(longest, n) if padded else used + n
        if current and cost > budget:
            packs.append(Pack(current, [list(sequences[j][prefix_len:]) for j in current], prefix))
            current, used, longest = [], 0, 0
        current.append(i)
        used += n
        longest = max(longest, n)
    packs.append(Pack(current, [list(sequences[j][prefix_len:]) for j in current], prefix))
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


@dataclass
class _PrefixState:
    key: tuple[int, ...]
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)


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
    except (ValueError, KeyError, OSError, ImportError) as exc:
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
        compile: compile each decoder layer with ``torch.compile`` (``auto``: on CUDA when Triton is present).
    """

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype, backend: str = "auto", compile: bool | str = "auto"):
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
        self._prefix: _PrefixState | None = None
        self.compiled = False
        if compile == "auto":
            compile = device.type == "cuda" and _has_triton()
        if compile and self.backend == "packed":
            self._compile_layers()

    def _compile_layers(self) -> None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        layers = self.backbone.layers
        for i in range(len(layers)):
            layers[i] = torch.compile(layers[i], dynamic=True)
        self.compiled = True

    # -- forward passes

    def _head(self, last_hidden: torch.Tensor) -> torch.Tensor:
        if self.final_norm is not None:
            last_hidden = self.final_norm(last_hidden)
        return F.linear(last_hidden.float(), self.head_weight, self.head_bias)

    def _stream(self, seqs: Sequence[Sequence[int]], offset: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        lengths = [len(s) for s in seqs]
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=sum(lengths))
        positions = np.concatenate([np.arange(offset, offset + n, dtype=np.int64) for n in lengths])
        ids = torch.from_numpy(flat).to(self.device, non_blocking=True)
        pos = torch.from_numpy(positions).to(self.device, non_blocking=True)
        return ids, pos, lengths

    def _prefix_state(self, prefix: tuple[int, ...]) -> _PrefixState:
        if self._prefix is not None and self._prefix.key == prefix:
            return self._prefix
        ids, pos, lengths = self._stream([prefix], 0)
        ctx = PackContext.build(lengths, self.device, use_flash=self.use_flash, record=True)
        with active(ctx):
            self.backbone(input_ids=ids[None], position_ids=pos[None], use_cache=False)
        self._prefix = _PrefixState(prefix, ctx.prefix_k, ctx.prefix_v)
        return self._prefix

    def forward_packed(self, seqs: Sequence[Sequence[int]], prefix: tuple[int, ...] = ()) -> torch.Tensor:
        """Logits [len(seqs), num_labels] (float32) of one packed pass; ``seqs`` continue ``prefix``."""
        state = self._prefix_state(prefix) if prefix else None
        ids, pos, lengths = self._stream(seqs, len(prefix))
        ctx = PackContext.build(
            lengths, self.device, use_flash=self.use_flash, prefix_len=len(prefix),
            prefix_k=state.keys if state else None, prefix_v=state.values if state else None,
        )
        with active(ctx):
            hidden = self.backbone(input_ids=ids[None], position_ids=pos[None], use_cache=False).last_hidden_state[0]
        ends = torch.tensor(np.cumsum(lengths) - 1, device=self.device)
        return self._head(hidden.index_select(0, ends))

    def forward_padded(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits of one right-padded batch (causal attention never lets real tokens see the padding)."""
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        batch = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        for row, s in enumerate(seqs):
            batch[row, : len(s)] = s
        ids = torch.from_numpy(batch).to(self.device)
        hidden = self.backbone(input_ids=ids, use_cache=False).last_hidden_state
        rows = torch.arange(len(seqs), device=self.device)
        ends = torch.tensor(lengths, device=self.device) - 1
        return self._head(hidden[rows, ends])

    def run_pack(self, pack: Pack) -> np.ndarray:
        with torch.inference_mode():
            if self.backend == "packed":
                logits = self.forward_packed(pack.seqs, pack.prefix)
            else:
                seqs = [list(pack.prefix) + s for s in pack.seqs] if pack.prefix else pack.seqs
                logits = self.forward_padded(seqs)
        return logits.cpu().numpy()


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
        backend, compile: see DeviceEngine.
        batch_tokens: token budget of one pack (default: 64k on GPU, 4k on CPU).
    """

    def __init__(self, path: str, devices: list[torch.device], dtype: torch.dtype, backend: str = "auto",
                 compile: bool | str = "auto", batch_tokens: int | None = None):
        self.replicas = [DeviceEngine(path, d, dtype, backend, compile) for d in devices]
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
        if not self.supports_prefix:
            groups = [PrefixGroup(g.indices, 0) for g in groups]
        return plan_packs(sequences, groups, self.batch_tokens, padded=self.backend == "padded")

    def run(self, packs: Sequence[Pack], count: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Logits [count, num_labels] (float32) for the sequences the packs cover."""
        out = np.zeros((count, self.num_labels), dtype=np.float32)
        if len(self.replicas) == 1 or len(packs) == 1:
            for pack in packs:
                out[pack.indices] = self.replicas[0].run_pack(pack)
                if progress:
                    progress(len(pack.indices))
            return out
        lock = threading.Lock()
        queue = list(reversed(packs))

        def worker(replica: DeviceEngine) -> None:
            if replica.device.type == "cuda":
                torch.cuda.set_device(replica.device)
            while True:
                with lock:
                    if not queue:
                        return
                    pack = queue.pop()
                logits = replica.run_pack(pack)
                with lock:
                    out[pack.indices] = logits
                    if progress:
                        progress(len(pack.indices))

        with ThreadPoolExecutor(len(self.replicas)) as pool:
            for future in [pool.submit(worker, r) for r in self.replicas]:
                future.result()
        return out
