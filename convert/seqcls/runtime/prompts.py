"""Prompts for scoring: the recipe's template, exact token ids, and truncation inside the document only.

The ids of a pair are the tokenisation of the whole rendered prompt (``add_special_tokens=False``:
the template carries any BOS itself), which is what transformers, sentence-transformers and vLLM
see. Only a prompt over the limit is changed, and then only by cutting the document *text* at a
token boundary (and the query, where the recipe caps its share) and tokenising the re-rendered
prompt again, so the prefix and the suffix that carries the answer position survive intact.

This module needs neither torch nor pydantic: ``PromptTemplate`` mirrors ``seqcls.recipe.Template``
so that the runtime can read ``seqcls_recipe.yaml`` on machines without pydantic.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from ..template_text import instruction_text, template_parts

_PLACEHOLDERS = {"query", "document", "instruction"}


@dataclass(frozen=True)
class TruncationSpec:
    """The recipe's ``template.truncation`` block."""

    max_length: int | None = None
    query_max_fraction: float | None = None
    document_side: str = "right"


@dataclass(frozen=True)
class PromptTemplate:
    """prefix + query part + document part + suffix, exactly as ``seqcls.recipe.Template`` renders it."""

    query: str
    document: str
    prefix: str = ""
    suffix: str = ""
    order: str = "query_first"
    instruction: str | None = None
    instruction_format: str = "{instruction}"
    truncation: TruncationSpec = field(default_factory=TruncationSpec)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "template") -> "PromptTemplate":
        """Build from a recipe's ``template`` mapping (plain YAML data), checking what rendering needs."""
        if not isinstance(data, dict):
            raise UsageError(f"{origin} is not a mapping; re-convert the model or fix its seqcls_recipe.yaml.")
        strings = {}
        for key in ("prefix", "query", "document", "suffix", "instruction_format"):
            value = data.get(key, "" if key in ("prefix", "suffix") else ("{instruction}" if key == "instruction_format" else None))
            if not isinstance(value, str):
                raise UsageError(f"{origin}.{key} must be a string; re-convert the model or fix its seqcls_recipe.yaml.")
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
            except ValueError as exc:
                raise UsageError(f"{origin}.{key}: {exc}; write literal braces as {{{{ and }}}}.") from exc
            if fields - _PLACEHOLDERS:
                raise UsageError(f"{origin}.{key} uses unknown placeholder {{{sorted(fields - _PLACEHOLDERS)[0]}}}; allowed: {{query}}, {{document}}, {{instruction}}.")
            strings[key] = value
        instruction = data.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise UsageError(f"{origin}.instruction must be a string or null.")
        order = data.get("order", "query_first")
        if order not in ("query_first", "document_first"):
            raise UsageError(f"{origin}.order must be query_first or document_first, not {order!r}.")
        trunc = data.get("truncation") or {}
        if not isinstance(trunc, dict):
            raise UsageError(f"{origin}.truncation must be a mapping.")
        side = trunc.get("document_side", "right")
        if side not in ("right", "left"):
            raise UsageError(f"{origin}.truncation.document_side must be right or left, not {side!r}.")
        return cls(
            query=strings["query"], document=strings["document"], prefix=strings["prefix"], suffix=strings["suffix"],
            order=order, instruction=instruction, instruction_format=strings["instruction_format"],
            truncation=TruncationSpec(trunc.get("max_length"), trunc.get("query_max_fraction"), side),
        )

    def instruction_text(self, instruction: str | None = None) -> str:
        return instruction_text(self, instruction)

    def parts(self, query: str, document: str, instruction: str | None = None) -> tuple[str, str, str]:
        """Return (text before the document, the document part, text after it)."""
        return template_parts(self, query, document, instruction)

    def render(self, query: str, document: str, instruction: str | None = None) -> str:
        """The exact prompt string for one pair."""
        return "".join(self.parts(query, document, instruction))


# ---------------------------------------------------------------- tokenisation


def load_tokenizer(folder: Path) -> Any:
    """The ``tokenizers.Tokenizer`` that transformers' AutoTokenizer runs for this folder.

    transformers 5 rebuilds the pre-tokenizer of some model types (Qwen2 splits digits one by one,
    whatever tokenizer.json says), and transformers is the reference the scores must match, so its
    backend tokenizer is used; tokenizer.json alone only where transformers is missing.
    """
    folder = Path(folder)
    tok = None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        AutoTokenizer = None
    if AutoTokenizer is not None:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            loaded = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # transformers raises many types for missing/odd tokenizer files
            raise UsageError(f"{folder} has no usable tokenizer ({type(exc).__name__}: {exc}); copy the source model's tokenizer files into it.") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        tok = getattr(loaded, "backend_tokenizer", None)
        if tok is None:
            raise UsageError(f"{folder} has only a slow tokenizer; save a fast one (tokenizer.json) into the folder.")
    else:
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise UsageError(f"{folder} has no tokenizer.json; copy the source model's tokenizer files into it.")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass
class EncodedPairs:
    """Token ids of rendered pairs, in input order."""

    ids: list[list[int]]
    truncated: list[int]  # indices of pairs whose document (or query) was cut

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.ids)


class PromptEncoder:
    """Renders pairs with the template and tokenises them, truncating only inside the document.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (see ``load_tokenizer``).
        template: the model's PromptTemplate.
        max_length: the longest prompt the model takes (tokens).
    """

    def __init__(self, tokenizer: Any, template: PromptTemplate, max_length: int):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = int(max_length)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encode = getattr(self.tokenizer, "encode_batch_fast", None) or self.tokenizer.encode_batch
        return [list(e.ids) for e in encode(list(texts), add_special_tokens=False)]

    def encode(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None = None,
        *,
        truncate: bool = True,
        max_length: int | None = None,
        max_document_tokens: int | None = None,
    ) -> EncodedPairs:
        """Token ids of each (query, document) pair; queries and documents have equal length.

        Args:
            truncate: cut over-long documents (True) or raise UsageError naming the token counts.
            max_length: a tighter limit than the model's (never looser).
            max_document_tokens: cut every document to at most this many tokens first.
        """
        limit = self.max_length if max_length is None else min(int(max_length), self.max_length)
        if limit < 1:
            raise UsageError(f"max_length must be a positive number of tokens, not {max_length}.")
        if max_document_tokens is not None and max_document_tokens < 1:
            raise UsageError(f"max_document_tokens must be a positive number of tokens, not {max_document_tokens}.")
        docs = list(documents)
        cut_docs: set[int] = set()
        if max_document_tokens is not None:
            doc_ids = self._ids(docs)
            for i, ids in enumerate(doc_ids):
                if len(ids) > max_document_tokens:
                    docs[i] = self._cut_text(docs[i], max_document_tokens, self.template.truncation.document_side)
                    cut_docs.add(i)
        texts = [self.template.render(q, d, instruction) for q, d in zip(queries, docs)]
        ids = self._ids(texts)
        truncated = sorted(cut_docs)
        over = [i for i, x in enumerate(ids) if len(x) > limit]
        for i in over:
            if not truncate:
                fixed = len(self._ids([self.template.render(queries[i], "", instruction)])[0])
                raise UsageError(
                    f"Pair {i} is {len(ids[i])} tokens (template and query {fixed}, document about {len(ids[i]) - fixed}), "
                    f"over the limit of {limit}; shorten the document, or allow truncation (truncate=True, or drop --no-truncate)."
                )
            ids[i] = self._truncate(queries[i], docs[i], instruction, limit, i)
            if i not in cut_docs:
                truncated.append(i)
        return EncodedPairs(ids, sorted(truncated))

    # -- truncation helpers

    def _cut_text(self, text: str, keep: int, side: str) -> str:
        """The text of the first (side=right) or last (side=left) ``keep`` tokens of ``text``."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        offsets = enc.offsets
        if keep <= 0:
            return ""
        if keep >= len(offsets):
            return text
        if side == "left":
            return text[offsets[len(offsets) - keep][0]:]
        return text[: offsets[keep - 1][1]]

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _truncate(self, query: str, document: str, instruction: str | None, limit: int, index: int) -> list[int]:
        spec = self.template.truncation
        fixed = self._count(self.template.render(query, "", instruction))
        if spec.query_max_fraction is not None:
            cap = max(1, int(limit * spec.query_max_fraction))
            query_tokens = self._count(query)
            if query_tokens > cap:
                query = self._cut_text(query, cap, "right")
                fixed = self._count(self.template.render(query, "", instruction))
        if fixed >= limit:
            raise UsageError(
                f"Pair {index}: the template and query alone are {fixed} tokens, at or over the limit of {limit}, "
                "so no document fits; shorten the query (or raise max_length)."
            )
        side = spec.document_side
        doc_tokens = self._count(document)
        keep = min(doc_tokens, limit - fixed)
        for _ in range(16):  # boundary merges can shift the count by a token or two; converge quickly
            text = self.template.render(query, self._cut_text(document, keep, side), instruction)
            ids = self._ids([text])[0]
            excess = len(ids) - limit
            if excess <= 0:
                return ids
            keep -= max(1, excess)
            if keep <= 0:
                break
        ids = self._ids([self.template.render(query, "", instruction)])[0]
        if len(ids) > limit:
            raise UsageError(f"Pair {index} cannot be cut to {limit} tokens inside its document; shorten the query.")
        return ids
