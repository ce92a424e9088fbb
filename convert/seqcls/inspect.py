"""``seqcls inspect``: what a source is and how it could be converted, from headers alone."""

from __future__ import annotations

from typing import Any

from .architectures import mapping_for
from .errors import UsageError
from .io.safetensors import Checkpoint
from .io.sources import open_source
from .recipe import detect_recipes
from .tokens import load_tokenizer

CANDIDATES = ["yes", "no", "Yes", "No", " yes", " no", "1", "0", "true", "false", "True", "False"]


def inspect_source(spec: str, revision: str | None = None) -> dict[str, Any]:
    source = open_source(spec, revision=revision)
    architectures = list(source.config.get("architectures") or [])
    info: dict[str, Any] = {"source": spec, "kind": source.kind, "folder": str(source.folder), "architectures": architectures}
    try:
        mapping = mapping_for(architectures)
        info["target_architecture"] = mapping.seq_cls
    except UsageError as exc:
        mapping = None
        info["target_architecture"] = f"unsupported: {exc}"
    checkpoint = Checkpoint.open(source.folder)
    info["tensors"] = len(checkpoint.tensors)
    info["bytes"] = checkpoint.total_bytes
    info["files"] = [p.name for p in checkpoint.files]
    info["dtypes"] = sorted({t.dtype for t in checkpoint.tensors.values()})
    if mapping is not None:
        embedding = checkpoint.tensors.get(mapping.embedding_key)
        if embedding is not None:
            info["vocab_size"], info["hidden_size"] = embedding.shape[0], embedding.shape[1]
        info["lm_head_in_checkpoint"] = mapping.head_key in checkpoint.tensors
        tie = source.config.get("tie_word_embeddings")
        info["tied"] = bool(tie) if tie is not None else mapping.head_key not in checkpoint.tensors
    try:
        tokenizer = load_tokenizer(source.folder)
        candidates = {}
        for text in CANDIDATES:
            ids = tokenizer.encode_ids(text)
            if len(ids) == 1:
                candidates[text] = ids[0]
        info["single_token_answers"] = candidates
    except UsageError:
        info["single_token_answers"] = "no tokenizer"
    info["matching_recipes"] = [r.name for r in detect_recipes(architectures, f"{source.name} {spec}")]
    return info
