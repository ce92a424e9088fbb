"""Sources: a local Hugging Face folder, a .gguf file (dequantised once, cached), or a Hub repo id."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

CONFIG_NAME = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "spiece.model", "vocab.txt",
)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")
EXTRA_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE")
HUB_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "tokenizer.model", "spiece.model", "merges.txt", "vocab.txt", "LICENSE*", "README.md"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass
class Source:
    """A resolved source: a local folder holding config.json, safetensors weights and the tokenizer."""

    spec: str
    folder: Path
    kind: str  # "local", "gguf" or "hub"
    name: str
    revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {"source": self.spec, "kind": self.kind, "revision": self.revision}


def cache_root() -> Path:
    return Path(os.environ.get("SEQCLS_CACHE", Path.home() / ".cache" / "seqcls"))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise UsageError(f"{folder} has no config.json; point SOURCE at a Hugging Face model folder, a .gguf file or a Hub repo id.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it.") from exc
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a JSON object; fix or re-download it.")
    return config


def looks_like_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and not spec.startswith((".", "/", "~")) and not Path(spec).exists()


def open_source(spec: str | Path, revision: str | None = None, allow_pickle: bool = False) -> Source:
    """Resolve SOURCE into a local folder (dequantising GGUF or downloading from the Hub as needed)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source(text, path, "local", path.resolve().name, revision, _read_config(path))
    if path.is_file() and path.suffix == ".gguf":
        folder = materialize_gguf(path)
        return Source(text, folder, "gguf", path.name, _file_digest(path), _read_config(folder))
    if path.is_file():
        raise UsageError(f"{path} is a file; SOURCE must be a model folder, a .gguf file or a Hub repo id.")
    if looks_like_repo_id(text):
        from .hub import download

        folder, commit = download(text, revision=revision, allow_pickle=allow_pickle)
        repo_id = text.split("@", 1)[0]
        return Source(text, folder, "hub", repo_id, commit, _read_config(folder))
    raise UsageError(f"Source {text} not found: it is not a folder, a .gguf file or a Hub repo id (org/name); check the path.")


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def materialize_gguf(path: Path) -> Path:
    """Dequantise a GGUF file through transformers into a cached float32 safetensors folder (once)."""
    target = cache_root() / "gguf" / f"{path.stem}-{_file_digest(path)}"
    if (target / CONFIG_NAME).is_file():
        return target
    try:
        import gguf  # noqa: F401
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise UsageError("Loading .gguf files needs the gguf and accelerate packages; run `pip install 'seqcls[gguf]'`.") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .writer import atomic_folder

    target.parent.mkdir(parents=True, exist_ok=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with atomic_folder(target, overwrite=True) as tmp:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
            # transformers refuses save_pretrained on a GGUF-loaded model, so write the dequantised
            # tensors and the config ourselves (a tied head is stored once, as the embedding).
            from safetensors.torch import save_file

            state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
            if getattr(model.config, "tie_word_embeddings", False):
                state.pop("lm_head.weight", None)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            config = model.config.to_dict()
            for key in ("quantization_config", "_name_or_path", "transformers_version"):
                config.pop(key, None)
            config["architectures"] = [type(model).__name__]
            config["dtype"] = "float32"
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            tokenizer.save_pretrained(str(tmp))
            del model, state
    except UsageError:
        raise
    except Exception as exc:  # transformers raises many types for unsupported GGUF architectures
        raise UsageError(f"Cannot dequantise {path.name} through transformers ({type(exc).__name__}: {exc}); use a safetensors checkpoint instead.") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return target


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Copy tokenizer, processor and license files; returns the names copied."""
    copied = []
    for name in (*TOKENIZER_FILES, *PROCESSOR_FILES, *EXTRA_FILES):
        src = source / name
        if src.is_file():
            shutil.copyfile(src, dest / name)
            copied.append(name)
    return copied
