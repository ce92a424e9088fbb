"""CausalLM -> SequenceClassification mappings, as data, plus ``register_architecture`` for custom ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UsageError


@dataclass(frozen=True)
class ArchitectureMapping:
    """How one causal-LM class maps onto its sequence-classification twin.

    Attributes:
        causal_lm: the source class name in ``config.architectures`` (e.g. ``Qwen3ForCausalLM``).
        seq_cls: the target class name written to ``config.architectures``.
        head_key: the checkpoint key of the LM head (absent from tied checkpoints).
        embedding_key: the checkpoint key of the input embedding, used when the head is tied.
        score_key: the checkpoint key the score head is written under.
        text_config: where the language-model settings live for multimodal configs (e.g. ``text_config``).
    """

    causal_lm: str
    seq_cls: str
    head_key: str = "lm_head.weight"
    embedding_key: str = "model.embed_tokens.weight"
    score_key: str = "score.weight"
    text_config: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


_BUILTIN = [
    ArchitectureMapping("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"),
    ArchitectureMapping("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    ArchitectureMapping("LlamaForCausalLM", "LlamaForSequenceClassification"),
    ArchitectureMapping("GemmaForCausalLM", "GemmaForSequenceClassification"),
    ArchitectureMapping("Gemma2ForCausalLM", "Gemma2ForSequenceClassification"),
    ArchitectureMapping("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification"),
    ArchitectureMapping("MistralForCausalLM", "MistralForSequenceClassification"),
    ArchitectureMapping("Phi3ForCausalLM", "Phi3ForSequenceClassification"),
    ArchitectureMapping("Qwen3MoeForCausalLM", "Qwen3MoeForSequenceClassification"),
    ArchitectureMapping(
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLForSequenceClassification",
        embedding_key="model.language_model.embed_tokens.weight",
        text_config="text_config",
    ),
]

_REGISTRY: dict[str, ArchitectureMapping] = {m.causal_lm: m for m in _BUILTIN}


def register_architecture(
    causal_lm: str,
    seq_cls: str,
    *,
    head_key: str = "lm_head.weight",
    embedding_key: str = "model.embed_tokens.weight",
    score_key: str = "score.weight",
    text_config: str | None = None,
    overwrite: bool = False,
) -> ArchitectureMapping:
    """Teach seqcls a custom causal-LM architecture.

    Args:
        causal_lm: class name found in the source ``config.json`` ``architectures``.
        seq_cls: class name to write into the output config (must be loadable by your consumers).
        head_key, embedding_key, score_key: checkpoint keys of the LM head, the input embedding
            (used for tied heads) and the score head to write.
        text_config: sub-config holding ``vocab_size``/``hidden_size`` for multimodal models.
        overwrite: replace an existing mapping for ``causal_lm``.

    Returns:
        The registered mapping.

    Example:
        >>> import seqcls
        >>> seqcls.register_architecture("MyLMForCausalLM", "MyLMForSequenceClassification",
        ...                              embedding_key="transformer.wte.weight")
    """
    mapping = ArchitectureMapping(causal_lm, seq_cls, head_key, embedding_key, score_key, text_config)
    existing = _REGISTRY.get(causal_lm)
    if existing is not None and existing != mapping and not overwrite:
        raise UsageError(f"Architecture {causal_lm} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[causal_lm] = mapping
    return mapping


def known_architectures() -> list[str]:
    return sorted(_REGISTRY)


def mapping_for(architectures: list[str] | None, custom: ArchitectureMapping | None = None) -> ArchitectureMapping:
    """Find the mapping for a config's ``architectures`` list (a recipe's custom mapping wins)."""
    names = list(architectures or [])
    if custom is not None and (not names or custom.causal_lm in names):
        return custom
    for name in names:
        if name in _REGISTRY:
            return _REGISTRY[name]
    if any(name.endswith("ForSequenceClassification") for name in names):
        raise UsageError(f"The source is already a sequence-classification model ({names[0]}); it has a score head and needs no conversion.")
    shown = ", ".join(names) or "none listed in config.json"
    raise UsageError(
        f"Unsupported architecture ({shown}); register it with seqcls.register_architecture() "
        "or an `architecture:` block in a recipe file."
    )
