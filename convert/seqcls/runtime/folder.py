"""Reading a converted folder: config, provenance, recipe template, tokenizer, context length.

Works without pydantic (the recipe is then read as plain YAML) and without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .prompts import PromptTemplate

RECIPE_FILE = "seqcls_recipe.yaml"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelFolder:
    """What the runtime needs from a converted ``*ForSequenceClassification`` folder."""

    path: Path
    config: dict[str, Any]
    recipe: dict[str, Any]
    template: PromptTemplate
    architecture: str
    num_labels: int
    labels: list[str]
    max_length: int
    provenance: dict[str, Any]

    @property
    def method(self) -> str | None:
        return self.provenance.get("method") or self.recipe.get("method")

    @property
    def name(self) -> str:
        return self.path.name


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def resolve_path(model_or_dir: str | Path) -> Path:
    """A local folder as is; a Hub repo id downloaded (or found in the local Hub cache)."""
    path = Path(str(model_or_dir)).expanduser()
    if path.is_dir():
        return path
    text = str(model_or_dir)
    if path.exists():
        raise UsageError(f"{text} is a file; pass the folder of a converted model (made by `seqcls convert`).")
    if _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.yaml", "*.jinja", "*.model", "*.txt"]))
        except Exception as exc:  # network, auth, missing repo: one clear sentence
            raise UsageError(f"Cannot get {text} from the Hugging Face Hub ({type(exc).__name__}); check the repo id or pass a local folder.") from exc
    raise UsageError(f"Model folder {text} not found; pass the output folder of `seqcls convert` (or a Hub repo id).")


def _read_recipe(path: Path) -> dict[str, Any]:
    file = path / RECIPE_FILE
    if not file.is_file():
        raise UsageError(
            f"{path} has no {RECIPE_FILE}, so it is not a folder made by `seqcls convert`; "
            "convert the model first (seqcls convert SOURCE --output DIR)."
        )
    try:
        from ..recipe import load_recipe  # pydantic validation where available
    except ImportError:
        load_recipe = None
    if load_recipe is not None:
        return load_recipe(str(file)).to_dict()
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{file} is not valid YAML ({exc}); re-convert the model.") from exc
    if not isinstance(data, dict) or "template" not in data:
        raise UsageError(f"{file} has no template; re-convert the model.")
    return data


def load_folder(model_or_dir: str | Path) -> ModelFolder:
    """Read and check a converted folder.

    Raises:
        UsageError: when the folder is missing or is not a converted sequence-classification model.
    """
    path = resolve_path(model_or_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{path} has no config.json, so it is not a model folder; pass the output folder of `seqcls convert`.")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{config_file} is not valid JSON ({exc.msg}); re-convert the model.") from exc
    archs = config.get("architectures") or []
    arch = next((a for a in archs if isinstance(a, str) and a.endswith("ForSequenceClassification")), None)
    if arch is None:
        shown = ", ".join(map(str, archs)) or "none"
        raise UsageError(
            f"{path} is not a sequence-classification model (architectures: {shown}); "
            "convert it first with `seqcls convert` and score the output folder."
        )
    recipe = _read_recipe(path)
    template = PromptTemplate.from_dict(recipe.get("template"), f"{path / RECIPE_FILE}: template")
    provenance = config.get("seqcls") if isinstance(config.get("seqcls"), dict) else {}
    num_labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 1)
    id2label = config.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels)]
    text = _text_config(config)
    context = text.get("max_position_embeddings") or config.get("max_position_embeddings") or 2048
    limit = template.truncation.max_length
    max_length = int(min(context, limit)) if limit else int(context)
    if not any(path.glob("*.safetensors")):
        raise UsageError(f"{path} has no .safetensors weights; re-convert the model (seqcls writes model.safetensors).")
    return ModelFolder(path, config, recipe, template, arch, num_labels, labels, max_length, provenance)
