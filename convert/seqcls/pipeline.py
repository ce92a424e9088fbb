"""plan (headers only) -> convert (stream) -> verify -> finalize (atomic rename).

Nothing here instantiates a model: the plan comes from config.json, safetensors headers and the
tokenizer; the score head is computed in float32 from the answer-token rows of the LM head (or the
input embedding when tied); every other tensor is copied as raw bytes into size-bounded shards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .architectures import ArchitectureMapping, mapping_for
from .errors import UsageError
from .io.dtypes import FLOAT_DTYPES, NAME_TO_ST, ST_TO_NAME, from_float32
from .io.safetensors import Checkpoint, OutTensor, ShardPlan, TensorInfo, parse_size, plan_shards, write_shards
from .io.sources import Source, copy_side_files, open_source
from .io.writer import atomic_folder, check_output
from .methods import METHODS, num_labels
from .recipe import Recipe, chat_template, detect_recipes, load_recipe
from .tokens import TextTokenizer, load_tokenizer, resolve_labels

ST_SIGMOID = "torch.nn.modules.activation.Sigmoid"
ST_IDENTITY = "torch.nn.modules.linear.Identity"


class Progress(Protocol):
    def start(self, description: str, total: int) -> Callable[[int], None]: ...


class _NoProgress:
    def start(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None


def _versions() -> dict[str, str]:
    out = {}
    for package in ("seqcls", "transformers", "safetensors", "tokenizers", "torch"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def text_config(config: dict[str, Any], mapping: ArchitectureMapping) -> dict[str, Any]:
    if mapping.text_config and isinstance(config.get(mapping.text_config), dict):
        return config[mapping.text_config]
    return config


def _config_value(config: dict[str, Any], mapping: ArchitectureMapping, key: str) -> Any:
    inner = text_config(config, mapping)
    return inner.get(key, config.get(key))


@dataclass
class ConversionPlan:
    """Everything a conversion will do, computed from headers alone (what --dry-run prints)."""

    source: Source
    recipe: Recipe
    mapping: ArchitectureMapping
    checkpoint: Checkpoint
    head: TensorInfo
    tied: bool
    token_ids: list[int]
    token_texts: list[str | None]
    num_labels: int
    out_dtype: str
    pad_token_id: int
    pad_token: str | None
    shards: ShardPlan
    output: Path
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.spec,
            "source_kind": self.source.kind,
            "source_folder": str(self.source.folder),
            "recipe": self.recipe.name,
            "method": self.recipe.method,
            "source_architecture": self.mapping.causal_lm,
            "target_architecture": self.mapping.seq_cls,
            "tied": self.tied,
            "head_from": self.head.name,
            "tokens": list(self.recipe.tokens),
            "token_ids": self.token_ids,
            "num_labels": self.num_labels,
            "dtype": ST_TO_NAME.get(self.out_dtype, self.out_dtype),
            "pad_token_id": self.pad_token_id,
            "tensors": sum(len(s) for s in self.shards.shards),
            "bytes": self.shards.total_bytes,
            "shards": [
                {"file": name, "tensors": len(shard), "bytes": sum(t.nbytes for t in shard)}
                for name, shard in zip(self.shards.file_names, self.shards.shards)
            ],
            "output": str(self.output),
            "notes": self.notes,
        }


def choose_recipe(source: Source, recipe: str | Recipe | None) -> Recipe:
    if recipe is not None:
        return load_recipe(recipe)
    architectures = list(source.config.get("architectures") or [])
    found = detect_recipes(architectures, f"{source.name} {source.spec}")
    if len(found) == 1:
        return found[0]
    arch = ", ".join(architectures) or "unknown architecture"
    if not found:
        raise UsageError(f"No built-in recipe matches {source.name} ({arch}); pass --recipe NAME or a recipe .yaml file (see `seqcls recipes list`).")
    names = ", ".join(r.name for r in found)
    raise UsageError(f"Several recipes match {source.name} ({arch}): {names}; pick one with --recipe.")


def _resolve_pad(source: Source, mapping: ArchitectureMapping, tokenizer: TextTokenizer | None, recipe: Recipe, vocab: int) -> tuple[int, str | None, list[str]]:
    """Pick pad_token_id (never null, trap 2) consistent with the tokenizer's pad token.

    The pad id must not be the prompt's last token, or "last non-pad token" pooling scores the wrong
    position; when the natural choice collides, the next candidate is taken and the tokenizer's pad
    token is rewritten to match.
    """
    tok_cfg = _read_json(source.folder / "tokenizer_config.json")
    notes: list[str] = []
    candidates: list[int] = []

    def add(value: Any) -> None:
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < vocab and value not in candidates:
            candidates.append(value)

    pad_text = tok_cfg.get("pad_token")
    if isinstance(pad_text, dict):
        pad_text = pad_text.get("content")
    if isinstance(pad_text, str) and tokenizer is not None:
        ids = tokenizer.encode_ids(pad_text)
        if len(ids) == 1:
            add(ids[0])
    for key in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        add(_config_value(source.config, mapping, key))
    if not candidates:
        add(0)
    last_id = None
    if tokenizer is not None:
        sample = tokenizer.encode_ids(recipe.template.render("query", "document"))
        last_id = sample[-1] if sample else None
    for candidate in candidates:
        if candidate != last_id:
            text = tokenizer.token_text(candidate) if tokenizer is not None else None
            if candidate != candidates[0]:
                notes.append(f"pad token {candidates[0]} is the prompt's last token; using {candidate} instead")
            return candidate, text, notes
    raise UsageError("No usable pad token: every candidate is the prompt's last token; add a pad token to the tokenizer.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def plan(
    source: str | Path | Source,
    output: str | Path,
    recipe: str | Recipe | None = None,
    *,
    dtype: str = "auto",
    max_shard_size: str | int | None = None,
    overwrite: bool = False,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> ConversionPlan:
    """Resolve source and recipe and plan the conversion from headers only (writes nothing)."""
    output = Path(output)
    check_output(output, overwrite)
    src = source if isinstance(source, Source) else open_source(source, revision=revision, allow_pickle=allow_pickle)
    rec = choose_recipe(src, recipe)
    custom = ArchitectureMapping(**rec.architecture.model_dump()) if rec.architecture else None
    mapping = mapping_for(src.config.get("architectures"), custom)
    if src.config.get("quantization_config"):
        raise UsageError(f"{src.spec} is a quantized checkpoint; convert the unquantized (bf16/fp16/fp32) weights instead.")
    checkpoint = Checkpoint.open(src.folder)

    tie_flag = _config_value(src.config, mapping, "tie_word_embeddings")
    has_head = mapping.head_key in checkpoint.tensors
    tied = bool(tie_flag) if tie_flag is not None else not has_head
    if not tied and not has_head:
        raise UsageError(f"{src.spec} has no {mapping.head_key} and its config says the head is untied; the checkpoint is incomplete.")
    weight_key = mapping.embedding_key if tied else mapping.head_key
    if weight_key not in checkpoint.tensors:
        raise UsageError(f"{src.spec} has no tensor {weight_key!r} to build the head from; fix the architecture mapping (register_architecture or a recipe `architecture:` block).")
    head = checkpoint.tensors[weight_key]
    if len(head.shape) != 2 or head.dtype not in FLOAT_DTYPES:
        raise UsageError(f"Tensor {weight_key} is {head.dtype}{list(head.shape)}, not a 2-D float matrix; this checkpoint cannot be converted.")
    vocab = head.shape[0]

    tokenizer = None
    try:
        tokenizer = load_tokenizer(src.folder)
    except UsageError:
        if any(isinstance(t, str) for t in rec.tokens):
            raise
    token_ids = resolve_labels(tokenizer, rec.tokens, vocab)
    token_texts = [tokenizer.token_text(i) if tokenizer is not None else None for i in token_ids]
    pad_id, pad_text, notes = _resolve_pad(src, mapping, tokenizer, rec, vocab)

    chosen = dtype if dtype != "auto" else rec.output.dtype
    if chosen == "auto":
        declared = _config_value(src.config, mapping, "dtype") or _config_value(src.config, mapping, "torch_dtype")
        out_dtype = NAME_TO_ST.get(str(declared), head.dtype)
    elif chosen in NAME_TO_ST:
        out_dtype = NAME_TO_ST[chosen]
    else:
        raise UsageError(f"Unknown dtype {chosen!r}; use auto, float32, bfloat16 or float16.")

    tensors: list[OutTensor] = []
    for info in checkpoint.tensors.values():
        if info.name == mapping.head_key:
            continue
        cast = out_dtype if info.dtype in FLOAT_DTYPES else info.dtype
        tensors.append(OutTensor(info.name, cast, info.shape, source=info))
    n_labels = num_labels(rec.method, len(token_ids))
    if mapping.score_key in checkpoint.tensors:
        raise UsageError(f"{src.spec} already has {mapping.score_key}; it is a sequence-classification model and needs no conversion.")
    tensors.append(OutTensor(mapping.score_key, out_dtype, (n_labels, head.shape[1])))
    shard_bytes = parse_size(max_shard_size if max_shard_size is not None else rec.output.max_shard_size)
    shards = plan_shards(tensors, shard_bytes)
    return ConversionPlan(src, rec, mapping, checkpoint, head, tied, token_ids, token_texts, n_labels, out_dtype, pad_id, pad_text, shards, output, notes)


def _use_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    if device not in {"auto", "cuda"} and not device.startswith("cuda"):
        raise UsageError(f"Unknown device {device!r}; use auto, cpu or cuda.")
    if device == "auto" and not Path("/dev/nvidiactl").exists():
        return False  # no GPU: stay off torch so conversion starts fast
    try:
        import torch
    except ImportError:
        available = False
    else:
        available = torch.cuda.is_available()
    if device != "auto" and not available:
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    return available


def compute_head(p: ConversionPlan, device: str = "auto") -> bytes:
    """The score weight: method(rows) in float32 (on the GPU when present), cast to the output dtype."""
    rows = p.checkpoint.read_rows(p.head.name, p.token_ids)
    method = METHODS[p.recipe.method]
    if _use_cuda(device):
        import torch

        weight = method(torch.from_numpy(rows).to("cuda" if device == "auto" else device, torch.float32)).cpu().numpy()
    else:
        weight = method(rows)
    return from_float32(np.asarray(weight, dtype=np.float32), p.out_dtype)


def output_config(p: ConversionPlan) -> dict[str, Any]:
    """config.json of the converted model, as the output contract says."""
    config = json.loads(json.dumps(p.source.config))
    for key in ("method", "classifier_from_token", "torch_dtype", "quantization_config", "_name_or_path"):
        config.pop(key, None)
    labels = p.recipe.labels
    config["architectures"] = [p.mapping.seq_cls]
    config["num_labels"] = p.num_labels
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    config["pad_token_id"] = p.pad_token_id
    inner = text_config(config, p.mapping)
    if inner is not config:  # vLLM reads num_labels (and use_sep_token) from get_text_config()
        inner["pad_token_id"] = p.pad_token_id
        inner["id2label"] = dict(config["id2label"])
        inner["label2id"] = dict(config["label2id"])
        inner["use_sep_token"] = False
        for key in ("method", "classifier_from_token"):
            inner.pop(key, None)
        inner.pop("torch_dtype", None)
        inner["dtype"] = ST_TO_NAME[p.out_dtype]
    config["use_sep_token"] = False
    config["use_pad_token"] = False
    config["dtype"] = ST_TO_NAME[p.out_dtype]
    config["sentence_transformers"] = {"activation_fn": ST_SIGMOID if p.num_labels == 1 else ST_IDENTITY}
    config["seqcls"] = {
        "recipe": p.recipe.name,
        "method": p.recipe.method,
        "tokens": list(p.recipe.tokens),
        "token_ids": p.token_ids,
        "token_texts": p.token_texts,
        "source": p.source.spec,
        "source_kind": p.source.kind,
        "revision": p.source.revision,
        "source_architecture": p.mapping.causal_lm,
        "tied_head": p.tied,
        "head_from": p.head.name,
        "padding_side": p.recipe.padding_side,
        "versions": _versions(),
    }
    return config


def _write_tokenizer_files(p: ConversionPlan, folder: Path) -> None:
    copy_side_files(p.source.folder, folder)
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path)
    tok_cfg.pop("chat_template", None)
    tok_cfg["padding_side"] = p.recipe.padding_side
    if p.pad_token is not None:
        tok_cfg["pad_token"] = p.pad_token
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    special = folder / "special_tokens_map.json"
    if special.is_file() and p.pad_token is not None:
        data = _read_json(special)
        data["pad_token"] = p.pad_token
        special.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    (folder / "chat_template.jinja").write_text(chat_template(p.recipe.template, _image_text(p)), encoding="utf-8")


def _image_text(p: ConversionPlan) -> str | None:
    """``<|vision_start|><|image_pad|><|vision_end|>`` of a vision-language source (None for text models)."""
    ids = [p.source.config.get(k) for k in ("vision_start_token_id", "image_token_id", "vision_end_token_id")]
    if not all(isinstance(i, int) for i in ids):
        return None
    try:
        tokenizer = load_tokenizer(p.source.folder)
    except UsageError:
        return None
    texts = [tokenizer.token_text(i) for i in ids]
    return "".join(texts) if all(texts) else None


@dataclass
class ConversionResult:
    """What ``convert`` produced."""

    output: Path
    plan: ConversionPlan
    files: list[str]
    seconds: float
    parity: Any = None

    def to_dict(self) -> dict[str, Any]:
        out = self.plan.to_dict()
        out.update(output=str(self.output), files=self.files, seconds=round(self.seconds, 3))
        if self.parity is not None:
            out["parity"] = self.parity.summary()
        return out


def write(p: ConversionPlan, folder: Path, *, device: str = "auto", progress: Progress | None = None) -> list[str]:
    """Write weights, config, tokenizer and recipe of a planned conversion into ``folder``."""
    progress = progress or _NoProgress()
    head_bytes = compute_head(p, device)
    for shard in p.shards.shards:
        for tensor in shard:
            if tensor.name == p.mapping.score_key:
                tensor.data = head_bytes
    advance = progress.start("Writing weights", p.shards.total_bytes)
    write_shards(p.shards, folder, advance)
    (folder / "config.json").write_text(json.dumps(output_config(p), indent=2, ensure_ascii=False) + "\n")
    _write_tokenizer_files(p, folder)
    (folder / "seqcls_recipe.yaml").write_text(p.recipe.to_yaml(), encoding="utf-8")
    return sorted(path.name for path in folder.iterdir())


def convert(
    source: str | Path,
    output: str | Path,
    recipe: str | Recipe | None = None,
    *,
    dtype: str = "auto",
    max_shard_size: str | int | None = None,
    device: str = "auto",
    verify: bool = True,
    overwrite: bool = False,
    revision: str | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    verify_hook: Callable[[ConversionPlan, Path], Any] | None = None,
) -> ConversionResult:
    """Convert a causal-LM reranker into a ``*ForSequenceClassification`` folder.

    Args:
        source: local folder, ``.gguf`` file, or Hub id ``org/name[@revision]``.
        output: the folder to create (atomically; refuses an existing one unless ``overwrite``).
        recipe: built-in name, YAML path or Recipe; auto-detected when None and unambiguous.
        dtype: ``auto`` (the source's), ``float32``, ``bfloat16`` or ``float16``.
        max_shard_size: e.g. ``"5GB"``; defaults to the recipe's.
        device: where the head arithmetic runs: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        verify: run the parity check before the folder is put in place.

    Returns:
        ConversionResult with the output path, the plan and the file list.

    Example:
        >>> out = seqcls.convert("Qwen/Qwen3-Reranker-0.6B", output="out", recipe="qwen3")
    """
    started = time.perf_counter()
    p = plan(source, output, recipe, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite, revision=revision, allow_pickle=allow_pickle)
    return execute(p, device=device, verify=verify, overwrite=overwrite, progress=progress, verify_hook=verify_hook, started=started)


def execute(
    p: ConversionPlan,
    *,
    device: str = "auto",
    verify: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    verify_hook: Callable[[ConversionPlan, Path], Any] | None = None,
    started: float | None = None,
) -> ConversionResult:
    """Carry out a plan: write into a temporary sibling, verify there, then rename into place."""
    started = time.perf_counter() if started is None else started
    report = None
    with atomic_folder(p.output, overwrite=overwrite) as tmp:
        files = write(p, tmp, device=device, progress=progress)
        if verify:
            hook = verify_hook or _default_verify
            report = hook(p, tmp)
            files = sorted(path.name for path in tmp.iterdir())
    return ConversionResult(p.output, p, files, time.perf_counter() - started, report)


def _default_verify(p: ConversionPlan, folder: Path) -> Any:
    from .parity import verify_folder

    return verify_folder(folder, source=p.source, raise_on_failure=True)
