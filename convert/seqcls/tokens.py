"""Answer-token resolution: every label must be exactly one token id (or a raw id inside the vocabulary)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

from .errors import UsageError


class TextTokenizer(Protocol):
    def encode_ids(self, text: str) -> list[int]: ...
    def token_text(self, token_id: int) -> str | None: ...


class _FastTokenizer:
    """``tokenizers`` directly from tokenizer.json: no transformers import on the conversion path."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))

    def encode_ids(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def token_text(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)


class _TransformersTokenizer:
    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)

    def encode_ids(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def token_text(self, token_id: int) -> str | None:
        return self._tok.convert_ids_to_tokens(token_id)


@lru_cache(maxsize=8)
def load_tokenizer(folder: Path) -> TextTokenizer:
    """Load the tokenizer of a checkpoint folder, preferring tokenizer.json."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return _FastTokenizer(folder / "tokenizer.json")
    if any((folder / name).is_file() for name in ("tokenizer.model", "vocab.json", "tokenizer_config.json")):
        return _TransformersTokenizer(folder)
    raise UsageError(f"{folder} has no tokenizer files; string labels need one, so copy the tokenizer in or give raw token ids.")


def _neighbours(tokenizer: TextTokenizer, label: str) -> list[str]:
    stripped = re.sub(r"^[\W_]+|[\W_]+$", "", label) or label.strip()
    variants = [stripped, stripped.lower(), stripped.capitalize(), stripped.upper()]
    variants += [" " + v for v in variants]
    seen: list[str] = []
    for variant in dict.fromkeys(variants):
        if variant == label:
            continue
        ids = tokenizer.encode_ids(variant)
        if len(ids) == 1:
            seen.append(f"{variant!r} (id {ids[0]})")
    return seen


def resolve_label(tokenizer: TextTokenizer | None, label: str | int, vocab_size: int) -> int:
    """Return the single token id of ``label`` or raise a clear error naming the alternatives."""
    if isinstance(label, bool):
        raise UsageError(f"Label {label!r} is not a token; use a string such as 'yes' or an integer token id.")
    if isinstance(label, int):
        if not 0 <= label < vocab_size:
            raise UsageError(f"Label id {label} is outside the vocabulary (0..{vocab_size - 1}); use an id from this model's tokenizer.")
        return label
    if tokenizer is None:
        raise UsageError(f"Label {label!r} is a string but the source has no tokenizer; give raw token ids instead.")
    ids = tokenizer.encode_ids(label)
    if len(ids) == 1:
        if ids[0] >= vocab_size:
            raise UsageError(f"Label {label!r} encodes to id {ids[0]}, outside the model's vocabulary of {vocab_size}; check the tokenizer matches the weights.")
        return ids[0]
    found = _neighbours(tokenizer, label)
    alternatives = ("; single-token neighbours: " + ", ".join(found)) if found else "; no case or space variant is a single token either"
    raise UsageError(
        f"Label {label!r} is {len(ids)} tokens {ids} in this tokenizer, not one{alternatives}; use one of them or a raw token id."
    )


def resolve_labels(tokenizer: TextTokenizer | None, labels: Sequence[str | int], vocab_size: int) -> list[int]:
    ids = [resolve_label(tokenizer, label, vocab_size) for label in labels]
    if len(set(ids)) != len(ids):
        raise UsageError(f"Labels {list(labels)} resolve to repeated token ids {ids}; each label must be a different token.")
    return ids
