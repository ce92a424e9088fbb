"""Recipes: what to convert and how, as validated, frozen data (YAML on disk).

A recipe names the conversion method, the answer tokens, the prompt template around query and
document, and output/verification/card settings. Built-in recipes ship in the ``seqcls.recipes``
package; users write their own YAML, optionally ``extends:`` a built-in.
"""

from __future__ import annotations

import json
import re
import string
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from .errors import UsageError
from .template_text import instruction_text, template_parts

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_PLACEHOLDERS = {"query", "document", "instruction"}


class Match(BaseModel):
    """When auto-detection picks this recipe: any listed architecture AND any name pattern (regex, case-insensitive)."""

    model_config = _FROZEN
    architectures: list[StrictStr] = Field(default_factory=list, description="Source config.architectures values this recipe fits.")
    name_patterns: list[StrictStr] = Field(default_factory=list, description="Regexes searched in the source name or path.")

    @field_validator("name_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return patterns


class Truncation(BaseModel):
    """How over-long inputs are cut: always inside the document (or query), never the prefix or suffix."""

    model_config = _FROZEN
    max_length: int | None = Field(None, gt=0, description="Total prompt tokens; None means the model's context length.")
    query_max_fraction: float | None = Field(None, gt=0, le=1, description="Cap on the query's share of max_length (bge uses 0.75).")
    document_side: Literal["right", "left"] = Field("right", description="Which end of the document is cut: right keeps its beginning.")


class Template(BaseModel):
    """The prompt: prefix + query part + document part + suffix (or document before query).

    Parts use ``{query}``, ``{document}`` and ``{instruction}`` placeholders; write literal braces as
    ``{{`` and ``}}``. ``{instruction}`` becomes ``instruction_format`` filled with the instruction, or ""
    when there is none.
    """

    model_config = _FROZEN
    prefix: StrictStr = ""
    query: StrictStr
    document: StrictStr
    suffix: StrictStr = ""
    order: Literal["query_first", "document_first"] = "query_first"
    instruction: StrictStr | None = Field(None, description="Default instruction; None means no instruction unless the caller gives one.")
    instruction_format: StrictStr = Field("{instruction}", description="How a given instruction is rendered into {instruction}.")
    truncation: Truncation = Truncation()

    @model_validator(mode="after")
    def _placeholders(self) -> "Template":
        required = {"query": "query", "document": "document"}
        for part in ("prefix", "query", "document", "suffix", "instruction_format"):
            text = getattr(self, part)
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as exc:
                raise ValueError(f"template.{part}: {exc} (write literal braces as {{{{ and }}}})") from exc
            unknown = fields - _PLACEHOLDERS
            if unknown:
                raise ValueError(f"template.{part} uses unknown placeholder {{{sorted(unknown)[0]}}}; allowed: {{query}}, {{document}}, {{instruction}}")
            if part in required and required[part] not in fields:
                raise ValueError(f"template.{part} must contain {{{required[part]}}}")
            if part == "instruction_format" and fields != {"instruction"}:
                raise ValueError("template.instruction_format must contain {instruction} and nothing else")
            if part != "query" and "query" in fields or part != "document" and "document" in fields:
                raise ValueError(f"template.{part} may not use {{query}} or {{document}} outside its own part")
        return self

    def instruction_text(self, instruction: str | None = None) -> str:
        return instruction_text(self, instruction)

    def parts(self, query: str, document: str, instruction: str | None = None) -> tuple[str, str, str]:
        """Return (text before the document, the document part, text after it)."""
        return template_parts(self, query, document, instruction)

    def render(self, query: str, document: str, instruction: str | None = None) -> str:
        """The exact prompt string for one pair."""
        return "".join(self.parts(query, document, instruction))


class OutputOptions(BaseModel):
    model_config = _FROZEN
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_shard_size: StrictStr = "5GB"


class VerifyPair(BaseModel):
    model_config = _FROZEN
    query: StrictStr
    document: StrictStr


class VerifyOptions(BaseModel):
    model_config = _FROZEN
    pairs: list[VerifyPair] = Field(default_factory=list, description="Extra pairs checked in parity (besides the built-in set).")
    atol: float = Field(1e-4, gt=0, description="Largest allowed |converted - original| in fp32.")


class CardOptions(BaseModel):
    model_config = _FROZEN
    base_model: StrictStr | None = None
    license: StrictStr | None = None
    language: list[StrictStr] = Field(default_factory=list)
    tags: list[StrictStr] = Field(default_factory=list)


class ArchitectureSpec(BaseModel):
    """A custom CausalLM -> SeqCls mapping, so new architectures need no Python."""

    model_config = _FROZEN
    causal_lm: StrictStr
    seq_cls: StrictStr
    head_key: StrictStr = "lm_head.weight"
    embedding_key: StrictStr = "model.embed_tokens.weight"
    score_key: StrictStr = "score.weight"
    text_config: StrictStr | None = None


class Recipe(BaseModel):
    """A complete, validated conversion recipe.

    Example:
        >>> r = Recipe(name="mine", method="from_2_way_softmax", tokens=["no", "yes"],
        ...            template=Template(query="Q: {query}\\n", document="D: {document}\\n", suffix="Relevant:"))
        >>> r.template.render("q", "d")
        'Q: q\\nD: d\\nRelevant:'
    """

    model_config = _FROZEN
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: StrictStr = ""
    match: Match = Match()
    method: Literal["from_2_way_softmax", "no_post_processing"]
    tokens: list[Union[StrictInt, StrictStr]] = Field(description="Answer tokens; for from_2_way_softmax ordered [false, true].")
    template: Template
    padding_side: Literal["left", "right"] = "left"
    use_sep_token: bool = False
    output: OutputOptions = OutputOptions()
    verify: VerifyOptions = VerifyOptions()
    card: CardOptions = CardOptions()
    architecture: ArchitectureSpec | None = None

    @field_validator("tokens", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, tokens: Any) -> Any:
        if isinstance(tokens, list):
            for token in tokens:
                if isinstance(token, bool):
                    raise ValueError(f"{token!r} is a boolean: YAML reads unquoted yes/no/true/false as booleans, so quote the token (\"yes\")")
                if not isinstance(token, (int, str)):
                    raise ValueError(f"{token!r} is not a token; use a string such as \"yes\" or an integer token id")
        return tokens

    @model_validator(mode="after")
    def _token_count(self) -> "Recipe":
        if self.method == "from_2_way_softmax" and len(self.tokens) != 2:
            raise ValueError(f"from_2_way_softmax needs exactly 2 tokens [false, true], got {len(self.tokens)}")
        if self.method == "no_post_processing" and not self.tokens:
            raise ValueError("no_post_processing needs at least one token")
        if len(set(map(repr, self.tokens))) != len(self.tokens):
            raise ValueError("tokens must be distinct")
        for token in self.tokens:
            if isinstance(token, int) and token < 0:
                raise ValueError(f"token id {token} is negative")
            if isinstance(token, str) and not token:
                raise ValueError("a token may not be the empty string")
        return self

    @property
    def labels(self) -> list[str]:
        """Label names for id2label: the token for no_post_processing, 'score' style for 2-way."""
        if self.method == "from_2_way_softmax":
            return [str(self.tokens[1])]
        return [str(t) for t in self.tokens]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


# ---------------------------------------------------------------- loading with precise errors


class RecipeError(UsageError):
    """A recipe that does not validate; ``problems`` holds ``file:line: field.path: message`` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more)")


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000, default_flow_style=False)


def builtin_names() -> list[str]:
    folder = resources.files("seqcls.recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _builtin_text(name: str) -> tuple[str, str]:
    entry = resources.files("seqcls.recipes") / f"{name}.yaml"
    if not entry.is_file():
        raise RecipeError([f"Unknown recipe {name!r}; built-in recipes are {', '.join(builtin_names())}, or pass a path to a .yaml file."])
    return entry.read_text(encoding="utf-8"), f"<builtin>/{name}.yaml"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree; return the 1-based line."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _parse(text: str, origin: str) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([f"{origin}:{line}: (yaml): {problem}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"{origin}:1: (root): a recipe must be a YAML mapping of fields"])
    return data, node


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_raw(ref: str, base: Path | None, chain: tuple[str, ...], force_file: bool = False) -> tuple[dict[str, Any], yaml.Node | None, str]:
    """Read a recipe (file path or built-in name), resolving ``extends`` recursively."""
    path = Path(ref) if base is None else (base / ref)
    is_file = force_file or ref.endswith((".yaml", ".yml")) or "/" in ref or path.is_file()
    if is_file:
        if not path.is_file():
            raise RecipeError([f"{ref}: recipe file not found; check the path or use a built-in name ({', '.join(builtin_names())})."])
        origin = str(path)
        text = path.read_text(encoding="utf-8")
        key = str(path.resolve())
    else:
        text, origin = _builtin_text(ref)
        key = origin
    if key in chain:
        cycle = " -> ".join([*chain, key])
        raise RecipeError([f"{origin}:1: extends: cycle {cycle}"])
    data, node = _parse(text, origin)
    parent_ref = data.pop("extends", None)
    if parent_ref is not None:
        if not isinstance(parent_ref, str):
            raise RecipeError([f"{origin}:{_line_of(node, ('extends',))}: extends: must be a recipe name or a file path"])
        try:
            parent, _, _ = _read_raw(parent_ref, path.parent if is_file else None, (*chain, key))
        except RecipeError as exc:
            if exc.problems[0].startswith(f"{origin}:") or "cycle" in exc.problems[0]:
                raise
            raise RecipeError([f"{origin}:{_line_of(node, ('extends',))}: extends: {exc.problems[0]}"]) from exc
        data = _merge(parent, data)
    return data, node, origin


def _validate(data: dict[str, Any], node: yaml.Node | None, origin: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x in {"int", "str"}))
            field_path = ".".join(str(x) for x in loc) or "(root)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"unknown field {loc[-1]!r}"
            problems.append(f"{origin}:{_line_of(node, loc) or 1}: {field_path}: {message}")
        raise RecipeError(list(dict.fromkeys(problems))) from exc


def load_recipe(ref: "str | Path | Recipe") -> Recipe:
    """Load a recipe by built-in name or YAML path (resolving ``extends``).

    Args:
        ref: a built-in name such as ``"qwen3"``, a path to a YAML file, or a Recipe (returned as is).

    Returns:
        The validated, frozen Recipe.

    Raises:
        RecipeError: with ``file:line: field.path: message`` problems.

    Example:
        >>> seqcls.load_recipe("qwen3").tokens
        ['no', 'yes']
    """
    if isinstance(ref, Recipe):
        return ref
    data, node, origin = _read_raw(str(ref), None, ())
    return _validate(data, node, origin)


def validate_file(path: str | Path) -> list[str]:
    """Validate one recipe file; return its problems (empty when valid)."""
    try:
        data, node, origin = _read_raw(str(path), None, (), force_file=True)
        _validate(data, node, origin)
    except RecipeError as exc:
        return exc.problems
    return []


def builtin_recipes() -> list[Recipe]:
    return [load_recipe(name) for name in builtin_names()]


def detect_recipes(architectures: list[str], name: str) -> list[Recipe]:
    """Built-in recipes whose match fits the source architecture and name."""
    found = []
    for recipe in builtin_recipes():
        m = recipe.match
        if not m.architectures and not m.name_patterns:
            continue
        arch_ok = not m.architectures or any(a in m.architectures for a in architectures)
        name_ok = not m.name_patterns or any(re.search(p, name, re.IGNORECASE) for p in m.name_patterns)
        if arch_ok and name_ok:
            found.append(recipe)
    return found


# ---------------------------------------------------------------- the scoring chat template


def _jinja_literal(text: str) -> str:
    # Jinja decodes string literals with unicode-escape after backslash-replacing non-ASCII, so JSON
    # escapes round-trip exactly; emitting text as expressions keeps trailing newlines (trap 5).
    return "{{- " + json.dumps(text, ensure_ascii=False) + " -}}"


def _jinja_part(text: str, names: dict[str, str]) -> str:
    out = []
    for literal, field_name, _, _ in string.Formatter().parse(text):
        if literal:
            out.append(_jinja_literal(literal))
        if field_name is not None:
            out.append("{{- " + names[field_name] + " -}}")
    return "".join(out)


def chat_template(template: Template, image_text: str | None = None) -> str:
    """A Jinja chat template over messages with roles ``query`` and ``document`` (and optional
    ``instruction``/``system``, or an ``instruction=`` kwarg) that renders exactly ``template.render``.

    With ``image_text`` (vision-language models, e.g. ``<|vision_start|><|image_pad|><|vision_end|>``),
    ``image``/``image_url`` content parts render as that text, for the serving engine to expand."""
    names = {"query": "ns.query", "document": "ns.document", "instruction": "ns.inst"}
    default = "none" if template.instruction is None else json.dumps(template.instruction, ensure_ascii=False)
    fmt = _jinja_part(template.instruction_format, {"instruction": "ns.instruction"})
    prefix = _jinja_part(template.prefix, names)
    query = _jinja_part(template.query, names)
    document = _jinja_part(template.document, names)
    suffix = _jinja_part(template.suffix, names)
    body = query + document if template.order == "query_first" else document + query
    return (
        "{#- seqcls scoring template: messages with roles 'query' and 'document'. -#}\n"
        f"{{%- set ns = namespace(query='', document='', instruction={default}, inst='', text='') -%}}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}\n"
        "{%- else -%}{%- set ns.text = '' -%}{%- for part in message['content'] -%}\n"
        "{%- if part['type'] == 'text' -%}{%- set ns.text = ns.text ~ part['text'] -%}"
        + ("{%- elif part['type'] in ['image', 'image_url'] -%}{%- set ns.text = ns.text ~ " + json.dumps(image_text) + " -%}" if image_text else "")
        + "{%- endif -%}\n"
        "{%- endfor -%}{%- endif -%}\n"
        "{%- if message['role'] == 'query' -%}{%- set ns.query = ns.text -%}\n"
        "{%- elif message['role'] == 'document' -%}{%- set ns.document = ns.text -%}\n"
        "{%- elif message['role'] in ['instruction', 'system'] -%}{%- set ns.instruction = ns.text -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if instruction is defined and instruction is not none -%}{%- set ns.instruction = instruction -%}{%- endif -%}\n"
        "{%- if ns.instruction -%}{%- set ns.inst -%}" + fmt + "{%- endset -%}{%- endif -%}\n"
        + prefix + body + suffix + "\n"
    )
