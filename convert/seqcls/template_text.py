"""Prompt rendering shared by the recipe schema and the runtime (no pydantic, so the runtime can run
where only torch and transformers are installed)."""

from __future__ import annotations

from typing import Any


def instruction_text(template: Any, instruction: str | None = None) -> str:
    """``instruction_format`` filled with the given (or default) instruction, or "" when there is none."""
    chosen = template.instruction if instruction is None else instruction
    return template.instruction_format.format(instruction=chosen) if chosen else ""


def template_parts(template: Any, query: str, document: str, instruction: str | None = None) -> tuple[str, str, str]:
    """(text before the document, the document part, text after it) for any object with the template's
    fields: prefix, query, document, suffix, order, instruction, instruction_format."""
    inst = instruction_text(template, instruction)
    values = {"query": query, "document": document, "instruction": inst}
    prefix = template.prefix.format(instruction=inst)
    query_part = template.query.format(**values)
    suffix = template.suffix.format(instruction=inst)
    document_part = template.document.format(**values)
    if template.order == "query_first":
        return prefix + query_part, document_part, suffix
    return prefix, document_part, query_part + suffix
