"""``seqcls.Scorer``: score and rerank with a converted folder (the Python API behind the CLI and server)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UsageError
from ..multimodal import has_images, is_multimodal, plain_text
from .folder import ModelFolder, load_folder
from .prompts import PromptEncoder, load_tokenizer


@dataclass
class Usage:
    """Token usage of a call: every prompt token counts, shared prefix or not."""

    prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": self.total_tokens}


@dataclass
class ScoreResult:
    """Scores of the pairs, in input order.

    Attributes:
        scores: one float per pair for one-label models (a probability unless raw logits were asked
            for); a list of floats per pair for multi-label models (raw logits, or softmax rows).
        logits: the raw logits, one row per pair.
        usage: prompt token counts.
        truncated: indices of pairs whose document was cut to fit.
        activation: ``sigmoid``, ``softmax`` or ``none``.
        num_tokens: prompt tokens of each pair.
    """

    scores: list[Any]
    logits: list[list[float]]
    usage: Usage
    truncated: list[int] = field(default_factory=list)
    activation: str = "sigmoid"
    num_tokens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self):
        return iter(self.scores)

    def __getitem__(self, index: int) -> Any:
        return self.scores[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores, "activation": self.activation, "truncated": self.truncated,
            "usage": self.usage.to_dict(),
        }


@dataclass
class RerankItem:
    """One ranked document: its index in the input, its score, and the document as given (when returned:
    its text, or for a vision-language model the image or content list that was passed)."""

    index: int
    score: float
    document: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "score": self.score}
        if self.document is not None:
            out["document"] = self.document
        return out


@dataclass
class RerankResult:
    """Documents sorted by score, best first, cut to ``top_n``."""

    results: list[RerankItem]
    usage: Usage
    truncated: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, index: int) -> RerankItem:
        return self.results[index]

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results], "truncated": self.truncated, "usage": self.usage.to_dict()}


TEXT_ONLY = ("this model scores text only; send plain text (image documents need a converted "
             "vision-language reranker such as Qwen3-VL-Reranker).")


def _as_list(value: Any, name: str, content: bool = False) -> list[Any]:
    """A side as a list of items: strings, or (``content``) also images and content lists, normalised
    by ``seqcls.multimodal.content_parts``."""
    if isinstance(value, str):
        return [value]
    single = isinstance(value, dict) or not isinstance(value, Sequence)
    if single and not content:
        raise UsageError(f"{name} must be a string or a list of strings, not {type(value).__name__}" + (f"; {TEXT_ONLY}" if isinstance(value, dict) else "."))
    items = [value] if single else list(value)
    if not items:
        raise UsageError(f"{name} is empty; pass at least one.")
    if content:
        from ..multimodal import content_parts

        return [content_parts(item, f"{name}[{i}]" if not single else name) for i, item in enumerate(items)]
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise UsageError(f"{name}[{i}] is {type(item).__name__}, not a string; {TEXT_ONLY}")
    return items


def _token_ids(prompts: list[Any]) -> list[list[int]]:
    """Token ids of encoded prompts: id lists as they are, a MultimodalPrompt's expanded ids."""
    return [p if isinstance(p, list) else p.ids for p in prompts]


def make_pairs(queries: Any, documents: Any, content: bool = False) -> tuple[list[Any], list[Any]]:
    """Expand queries and documents into aligned pairs with vLLM's rules.

    One query with any number of documents (1:1, 1:N), or as many queries as documents (N:N).
    With ``content``, items may also be images or content lists (vision-language models).

    Raises:
        UsageError: for empty input, non-string items (text models), or other length combinations.
    """
    q = _as_list(queries, "queries", content)
    d = _as_list(documents, "documents", content)
    if len(q) == 1:
        return q * len(d), d
    if len(q) != len(d):
        raise UsageError(
            f"Input lengths must be either 1:1, 1:N or N:N (got {len(q)} queries and {len(d)} documents); "
            "pass one query, or exactly one query per document."
        )
    return q, d


class Scorer:
    """Scores (query, document) pairs with a converted ``*ForSequenceClassification`` folder.

    Reads the recipe and template from the folder, tokenises pairs exactly as transformers would,
    and runs the packed, prefix-sharing engine (GPU when available). Vision-language folders
    (Qwen3-VL) run transformers' backbone instead (``runtime.vision``) and accept image documents.

    Args:
        model_or_dir: the output folder of ``seqcls convert`` (or a Hub repo id of one).
        device: ``auto`` (every visible GPU, else CPU), ``cpu``, ``cuda`` (every GPU, one worker
            each, data parallel), ``cuda:N``, or a list of devices.
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
        max_length: longest prompt in tokens (default: the recipe's limit, else the model's context).
        truncate: cut over-long documents from the recipe's document side (default True); False
            refuses them with UsageError.
        shared_prefix: compute a query's prompt prefix once for all its documents (default True).
        batch_tokens: tokens per forward pass (default 64k on GPU, 4k on CPU).
        backend: ``auto`` (packed; on a GPU without the fused decoder's attention kernel, prefix-free
            sequences go as sorted padded batches with dense attention), ``packed`` (varlen packing
            only) or ``padded`` (transformers' own forward on
            padded batches, the fallback for architectures the packed path cannot drive).
        compile: ``auto`` (on CUDA), True or False: torch.compile the decoder layers (on CPU it pays
            off for large jobs: about 10 s once, then ~10% faster). Not used where ``fused`` applies.
        fused: ``auto`` (default), True or False: run Llama-family models (Llama, Mistral, Qwen2,
            Qwen3) through seqcls's fused decoder: in bf16/fp16 on CUDA its Triton kernels (norms,
            rotary, q/k-norm, SiLU·mul; residual adds folded into the matrix products), on CPU the same
            layer with PyTorch's ops in row blocks; False runs transformers' decoder layers.
        cpu_workers: on the CPU, how many packs run side by side, each on its share of torch's
            intra-op threads (``auto``: one per thread, i.e. ``torch.get_num_threads()`` workers of one
            thread each; 1: one pack at a time on all threads). For the length of a call torch's
            thread count is set to each worker's share, then restored. Each worker holds one pack's
            activations, so memory grows with the count.

    Example:
        >>> scorer = seqcls.Scorer("qwen3-reranker-seqcls")
        >>> scorer.score("capital of France?", ["Paris is the capital.", "Bananas are yellow."]).scores
        [0.998..., 0.001...]
        >>> scorer.rerank("capital of France?", docs, top_n=3)[0].index
    """

    def __init__(
        self,
        model_or_dir: str | Path,
        device: str | Sequence[str] = "auto",
        dtype: str = "auto",
        *,
        max_length: int | None = None,
        truncate: bool = True,
        shared_prefix: bool = True,
        batch_tokens: int | None = None,
        backend: str = "auto",
        compile: bool | str = "auto",
        fused: bool | str = "auto",
        cpu_workers: int | str = "auto",
    ):
        self.folder: ModelFolder = load_folder(model_or_dir)
        self.tokenizer = load_tokenizer(self.folder.path)
        limit = self.folder.max_length if max_length is None else min(int(max_length), self.folder.max_length)
        if limit < 1:
            raise UsageError(f"max_length must be a positive number of tokens, not {max_length}.")
        self.encoder = PromptEncoder(self.tokenizer, self.folder.template, limit)
        self.truncate = truncate
        self.shared_prefix = shared_prefix
        from .engine import Engine, resolve_devices, resolve_dtype

        devices = resolve_devices(device)
        self.prompter = None
        if is_multimodal(self.folder.architecture):
            from ..multimodal import MultimodalPrompter
            from .vision import VisionEngine

            self.prompter = MultimodalPrompter(self.folder.path, self.tokenizer, self.folder.template)
            self.engine: Any = VisionEngine(str(self.folder.path), devices, resolve_dtype(dtype, devices[0]), batch_tokens)
        else:
            self.engine = Engine(str(self.folder.path), devices, resolve_dtype(dtype, devices[0]), backend, compile, batch_tokens, fused,
                                 cpu_workers)

    # -- properties

    @property
    def num_labels(self) -> int:
        return self.engine.num_labels

    @property
    def labels(self) -> list[str]:
        return self.folder.labels

    @property
    def multimodal(self) -> bool:
        """Whether queries and documents may hold images (a converted vision-language reranker)."""
        return self.prompter is not None

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def device(self) -> str:
        return ",".join(str(d) for d in self.engine.devices)

    @property
    def dtype(self) -> str:
        return str(self.engine.dtype).replace("torch.", "")

    @property
    def template(self):
        return self.folder.template

    @property
    def model_name(self) -> str:
        return self.folder.name

    def __repr__(self) -> str:
        return f"Scorer({str(self.folder.path)!r}, device={self.device!r}, dtype={self.dtype!r}, backend={self.engine.backend!r})"

    # -- public API

    def tokenize(self, queries: str | Sequence[str], documents: str | Sequence[str], *, instruction: str | None = None,
                 truncate: bool | None = None, max_length: int | None = None, max_document_tokens: int | None = None) -> list[list[int]]:
        """Token ids of the rendered pairs (after any truncation), exactly as ``score`` will run them.

        Args:
            queries, documents: as in ``score`` (1:1, 1:N or N:N).
            instruction, truncate, max_length, max_document_tokens: as in ``score``.

        Returns:
            One list of token ids per pair: the whole prompt tokenised as transformers' AutoTokenizer
            does (no special tokens added; the template carries them).

        Example:
            >>> ids = scorer.tokenize("capital of France?", ["Paris is...", "Berlin is..."])
            >>> scorer.score_tokens(ids).scores  # the same scores as scorer.score(...)
        """
        prompts, _ = self._encode(queries, documents, instruction, truncate, max_length, max_document_tokens)
        return _token_ids(prompts)

    def score(
        self,
        queries: str | Sequence[str],
        documents: str | Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        softmax: bool = False,
        truncate: bool | None = None,
        max_length: int | None = None,
        max_document_tokens: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ScoreResult:
        """Score pairs with vLLM's 1:1, 1:N and N:N rules.

        Args:
            queries: one query (str) or a list: one query for all documents, or one per document.
            documents: one document or a list. For a vision-language model (``scorer.multimodal``) an
                item may also be an image: a PIL image, ``{"type": "image_url", "image_url": {"url":
                "data:image/png;base64,..." or a local path}}``, ``{"type": "image", "image": ...}``, or a
                content list / ``{"content": [...]}`` of text and image parts (queries likewise). Remote
                URLs are refused; pairs with images run one per forward pass and are never truncated.
            instruction: replaces the recipe's default instruction ("" for none).
            raw: return raw logits instead of probabilities (one-label models).
            softmax: for multi-label models, return softmax rows instead of raw logits.
            truncate: override the Scorer's truncation choice for this call.
            max_length: a tighter prompt limit for this call (vLLM's truncate_prompt_tokens).
            max_document_tokens: cut each document to this many tokens first.
            progress: called as ``progress(done, total)`` in pairs as batches finish.

        Returns:
            ScoreResult: ``scores`` in input order, ``usage`` and ``truncated``.

        Example:
            >>> scorer.score("what is a panda?", ["The giant panda is a bear.", "Paris"]).scores
        """
        prompts, truncated = self._encode(queries, documents, instruction, truncate, max_length, max_document_tokens)
        if any(not isinstance(p, list) for p in prompts):  # pairs with images: the vision engine, pair by pair
            logits = self.engine.run(self.engine.plan(prompts), len(prompts), self._advance(len(prompts), progress))
            return self._result(logits, _token_ids(prompts), truncated, raw, softmax)
        logits = self._run(prompts, progress)
        return self._result(logits, prompts, truncated, raw, softmax)

    def score_tokens(self, token_ids: Sequence[Sequence[int]], *, raw: bool = False, softmax: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> ScoreResult:
        """Score pre-tokenised prompts (already rendered with the model's template).

        Shared prefixes are found from the ids themselves. Nothing is truncated: a prompt over
        ``max_length`` raises UsageError.

        Args:
            token_ids: one list (or 1-D array) of token ids per prompt.
            raw, softmax, progress: as in ``score``.

        Returns:
            ScoreResult in input order.

        Example:
            >>> scorer.score_tokens(scorer.tokenize("q", ["a", "b"]), raw=True).scores
        """
        if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Sequence):
            raise UsageError("token_ids must be a list of token-id lists.")
        seqs = []
        for i, ids in enumerate(token_ids):
            if type(ids) is list and ids and type(ids[0]) is int and type(ids[-1]) is int:  # the common case, checked fast
                seqs.append(ids)
                continue
            if hasattr(ids, "tolist") and not isinstance(ids, list):
                ids = ids.tolist()  # numpy arrays and tensors
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not ids:
                raise UsageError(f"token_ids[{i}] must be a non-empty list of token ids.")
            if not isinstance(ids[0], int) or not isinstance(ids[-1], int) or isinstance(ids[0], bool):
                raise UsageError(f"token_ids[{i}] must hold integer token ids, not {type(ids[0]).__name__}.")
            seqs.append(ids if isinstance(ids, list) else list(ids))
        if not seqs:
            raise UsageError("token_ids is empty; pass at least one prompt.")
        for i, s in enumerate(seqs):
            if len(s) > self.max_length:
                raise UsageError(f"token_ids[{i}] is {len(s)} tokens, over the limit of {self.max_length}; shorten it.")
        logits = self._run(seqs, progress)
        return self._result(logits, seqs, [], raw, softmax)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        *,
        instruction: str | None = None,
        raw: bool = False,
        return_documents: bool = True,
        truncate: bool | None = None,
        max_length: int | None = None,
        max_document_tokens: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RerankResult:
        """Rank documents for one query, best first.

        Args:
            query: the query.
            documents: the candidate documents (strings).
            top_n: keep the best ``top_n`` (None or 0: all).
            instruction, raw, truncate, max_length, max_document_tokens, progress: as in ``score``.
            return_documents: include each document's text in the results.

        Returns:
            RerankResult: ``results`` of RerankItem(index, score, document), sorted by score, descending.

        Example:
            >>> best = scorer.rerank("capital of France?", docs, top_n=1)[0]
            >>> docs[best.index]
        """
        if not isinstance(query, str) and not self.multimodal:
            raise UsageError(f"query must be a string, not {type(query).__name__}; {TEXT_ONLY}")
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
            raise UsageError(f"top_n must be a non-negative integer, not {top_n!r}.")
        if self.num_labels != 1:
            raise UsageError(f"rerank needs a one-label model, this one has {self.num_labels} labels ({', '.join(self.labels)}); use score() instead.")
        if self.multimodal and not isinstance(documents, str):  # items may be images or content lists
            docs = list(documents) if isinstance(documents, Sequence) else [documents]
            if not docs:
                raise UsageError("documents is empty; pass at least one.")
        else:
            docs = _as_list(documents, "documents")
        result = self.score(query, docs, instruction=instruction, raw=raw, truncate=truncate, max_length=max_length,
                            max_document_tokens=max_document_tokens, progress=progress)
        order = sorted(range(len(docs)), key=lambda i: (-result.scores[i], i))
        if top_n:
            order = order[:top_n]
        items = [RerankItem(i, result.scores[i], docs[i] if return_documents else None) for i in order]
        return RerankResult(items, result.usage, result.truncated)

    # -- internals

    def _encode(self, queries: Any, documents: Any, instruction: str | None, truncate: bool | None,
                max_length: int | None, max_document_tokens: int | None) -> tuple[list[Any], list[int]]:
        """Token ids per pair (a MultimodalPrompt for pairs with images) and the truncated pairs' indices.

        Text (and content without images) goes through the PromptEncoder, truncation included; pairs
        with images are rendered with expanded image pads and never truncated."""
        q, d = make_pairs(queries, documents, content=self.multimodal)
        self._check_instruction(instruction)
        with_images = [i for i in range(len(q)) if has_images(q[i]) or has_images(d[i])] if self.multimodal else []
        image_rows = set(with_images)
        text_rows = [i for i in range(len(q)) if i not in image_rows]
        out: list[Any] = [None] * len(q)
        truncated: list[int] = []
        if text_rows:
            encoded = self.encoder.encode([plain_text(q[i]) for i in text_rows], [plain_text(d[i]) for i in text_rows], instruction,
                                          truncate=self.truncate if truncate is None else truncate,
                                          max_length=max_length, max_document_tokens=max_document_tokens)
            for row, ids in zip(text_rows, encoded.ids):
                out[row] = ids
            truncated = [text_rows[k] for k in encoded.truncated]
        limit = self.max_length if max_length is None else min(int(max_length), self.max_length)
        for i in with_images:
            assert self.prompter is not None
            out[i] = self.prompter.encode(q[i], d[i], instruction, max_length=limit, index=i)
        return out, truncated

    @staticmethod
    def _advance(total: int, progress: Callable[[int, int], None] | None) -> Callable[[int], None] | None:
        if progress is None:
            return None
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress(done[0], total)

        return advance

    def _check_instruction(self, instruction: Any) -> None:
        if instruction is not None and not isinstance(instruction, str):
            raise UsageError(f"instruction must be a string, not {type(instruction).__name__}.")

    def _run(self, seqs: list[list[int]], progress: Callable[[int, int], None] | None):
        from .engine import PrefixGroup, find_prefix_groups

        if self.shared_prefix and self.engine.supports_prefix:
            groups = find_prefix_groups(seqs)
        else:
            groups = [PrefixGroup(list(range(len(seqs))), 0)]
        packs = self.engine.plan(seqs, groups)
        return self.engine.run(packs, len(seqs), self._advance(len(seqs), progress))

    def _result(self, logits, seqs: list[list[int]], truncated: list[int], raw: bool, softmax: bool) -> ScoreResult:
        lengths = [len(s) for s in seqs]
        rows = [[float(x) for x in row] for row in logits]
        if self.num_labels == 1:
            if raw:
                scores: list[Any] = [r[0] for r in rows]
                activation = "none"
            else:
                scores = [_sigmoid(r[0]) for r in rows]
                activation = "sigmoid"
        elif softmax and not raw:
            scores = [_softmax(r) for r in rows]
            activation = "softmax"
        else:
            scores = rows
            activation = "none"
        return ScoreResult(scores, rows, Usage(sum(lengths)), truncated, activation, lengths)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]
