"""seqcls: turn LLM rerankers into exact, verified ``*ForSequenceClassification`` checkpoints.

The public API is imported lazily so that ``seqcls --help`` and conversions do not pay for torch.

Example:
    >>> import seqcls
    >>> out = seqcls.convert("Qwen/Qwen3-Reranker-0.6B", output="out", recipe="qwen3")
    >>> report = seqcls.verify("out")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "convert": "seqcls.pipeline",
    "plan": "seqcls.pipeline",
    "ConversionPlan": "seqcls.pipeline",
    "ConversionResult": "seqcls.pipeline",
    "verify": "seqcls.parity",
    "ParityReport": "seqcls.parity",
    "Recipe": "seqcls.recipe",
    "Template": "seqcls.recipe",
    "load_recipe": "seqcls.recipe",
    "register_architecture": "seqcls.architectures",
    "ArchitectureMapping": "seqcls.architectures",
    "Scorer": "seqcls.runtime.scorer",
    "push": "seqcls.publish",
    "SeqclsError": "seqcls.errors",
    "UsageError": "seqcls.errors",
    "CheckFailed": "seqcls.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seqcls' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
