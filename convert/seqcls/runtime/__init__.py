"""The scoring runtime: ``Scorer`` (score, rerank), the packed engine, the ``seqcls score`` command.

Imported lazily: ``import seqcls.runtime`` loads neither torch nor transformers.

Example:
    >>> from seqcls.runtime import Scorer
    >>> Scorer("qwen3-reranker-seqcls").rerank("capital of France?", ["Paris is...", "Berlin is..."], top_n=1)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Scorer": "seqcls.runtime.scorer",
    "ScoreResult": "seqcls.runtime.scorer",
    "RerankResult": "seqcls.runtime.scorer",
    "RerankItem": "seqcls.runtime.scorer",
    "Usage": "seqcls.runtime.scorer",
    "make_pairs": "seqcls.runtime.scorer",
    "load_folder": "seqcls.runtime.folder",
    "ModelFolder": "seqcls.runtime.folder",
    "PromptTemplate": "seqcls.runtime.prompts",
    "PromptEncoder": "seqcls.runtime.prompts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seqcls.runtime' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
