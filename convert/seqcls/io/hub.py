"""Downloading sources from the Hugging Face Hub (uploading lives in publish.py).

The client honours ``HF_TOKEN`` (or the ``hf auth login`` token file), ``HF_HOME`` / ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``. ``huggingface_hub`` reads most of them once, at import time;
``HF_ENDPOINT`` is re-read here at call time (:func:`endpoint`), which is the one seam tests and
in-process callers use to point seqcls at another Hub.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .sources import HUB_PATTERNS, cache_root, materialize_gguf

PICKLE_PATTERNS = ["*.bin"]
PICKLE_INDEX = "pytorch_model.bin.index.json"
_HEX40 = frozenset("0123456789abcdef")


def endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` as set now, else the client's default (read at its import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exceptions of the HTTP libraries huggingface_hub may use (connection lost, timeouts)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found = getattr(module, "TransportError", None) or getattr(module, "ConnectionError", None)
        if isinstance(found, type):
            errors.append(found)
    return tuple(errors)


def split_repo_spec(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); ``--revision`` is used when the spec names none."""
    repo_id, _, rev = spec.partition("@")
    if rev and revision and rev != revision:
        raise UsageError(f"{spec} pins revision {rev!r} but --revision says {revision!r}; give the revision once.")
    return repo_id, (rev or revision)


def _is_sha(text: str | None) -> bool:
    return bool(text) and len(text) == 40 and set(text) <= _HEX40


def download(spec: str, revision: str | None = None, allow_pickle: bool = False) -> tuple[Path, str | None]:
    """Fetch a Hub model (safetensors, config, tokenizer files; never pickles unless ``allow_pickle``).

    Args:
        spec: ``org/name`` or ``org/name@revision`` (branch, tag or commit sha).
        revision: used when ``spec`` names no revision.
        allow_pickle: accept ``pytorch_model*.bin`` weights, loaded with ``torch.load(weights_only=True)``
            and rewritten once as safetensors into the seqcls cache.

    Returns:
        (local folder holding config.json and safetensors weights, resolved commit sha).
    """
    repo_id, rev = split_repo_spec(spec, revision)
    folder = _snapshot(repo_id, rev, HUB_PATTERNS)
    commit = folder.name if _is_sha(folder.name) else rev
    if any(folder.glob("*.safetensors")):
        return folder, commit
    if allow_pickle:
        folder = _snapshot(repo_id, commit or rev, HUB_PATTERNS + PICKLE_PATTERNS)
        if any(folder.glob("*.bin")):
            return materialize_pickles(folder, repo_id, commit), commit
    return _fallback_weights(repo_id, folder, commit, allow_pickle), commit


def _snapshot(repo_id: str, rev: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=rev, allow_patterns=patterns, endpoint=endpoint()))
    except GatedRepoError as exc:
        raise UsageError(f"{repo_id} is gated; accept its terms on the Hub and log in with `hf auth login` or set HF_TOKEN.") from exc
    except RepositoryNotFoundError as exc:
        raise UsageError(f"Hub repo {repo_id} not found (or private); check the id, or log in with `hf auth login` / set HF_TOKEN.") from exc
    except RevisionNotFoundError as exc:
        raise UsageError(f"Revision {rev!r} not found in {repo_id}; check the branch, tag or commit.") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise UsageError(f"{repo_id} is not in the local cache and the Hub cannot be reached (offline?); connect or unset HF_HUB_OFFLINE.") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no response"
        if status == 401:
            raise UsageError(f"The Hub rejected the token while downloading {repo_id} (401); run `hf auth login` or fix HF_TOKEN.") from exc
        raise UsageError(f"Downloading {repo_id} failed ({status}); retry or check your access.") from exc
    except network_errors() as exc:
        raise UsageError(f"Downloading {repo_id} failed: cannot reach {endpoint()} ({type(exc).__name__}); check your connection and HF_ENDPOINT.") from exc
    except OSError as exc:
        raise UsageError(f"Downloading {repo_id} failed ({exc.strerror or type(exc).__name__}); check your connection, disk space and HF_ENDPOINT.") from exc


def _remote_files(repo_id: str, commit: str | None) -> list[str] | None:
    """File names of the repo at ``commit``, or None when offline / unreachable."""
    if is_offline():
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint()).list_repo_files(repo_id, revision=commit)
    except Exception:  # only used to word an error message better
        return None


def _fallback_weights(repo_id: str, folder: Path, commit: str | None, allow_pickle: bool) -> Path:
    """The snapshot has no safetensors: use a single GGUF file, or say exactly what to do."""
    files = _remote_files(repo_id, commit)
    if files is None:
        raise UsageError(
            f"{repo_id} has no .safetensors weights in the local cache; connect to the Hub, or pass --allow-pickle "
            "if the repo only has pickled pytorch_model.bin weights."
        )
    pickles = [f for f in files if f.endswith(".bin") and "/" not in f and f != "training_args.bin"]
    if pickles and not allow_pickle:
        raise UsageError(
            f"{repo_id} only has pickled weights ({', '.join(pickles[:3])}); pass --allow-pickle to load them safely "
            "(torch.load with weights_only=True) and convert them to safetensors."
        )
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if len(ggufs) == 1:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id, ggufs[0], revision=commit, endpoint=endpoint()))
        return materialize_gguf(path)
    if ggufs:
        shown = ", ".join(ggufs[:6]) + (", ..." if len(ggufs) > 6 else "")
        raise UsageError(
            f"{repo_id} holds {len(ggufs)} .gguf files ({shown}); download one with `hf download {repo_id} FILE.gguf` "
            "and pass its local path as SOURCE."
        )
    raise UsageError(f"{repo_id} has no .safetensors, pytorch_model.bin or .gguf weights; check the repo id and revision.")


def _pickle_files(folder: Path) -> list[str]:
    index = folder / PICKLE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{index.name} in the download is not a valid index; the repo is broken.") from exc
        return list(dict.fromkeys(weight_map.values()))
    if (folder / "pytorch_model.bin").is_file():
        return ["pytorch_model.bin"]
    candidates = sorted(p.name for p in folder.glob("*.bin") if p.name != "training_args.bin")
    if len(candidates) != 1:
        raise UsageError(f"Cannot tell which .bin files hold the weights ({', '.join(candidates) or 'none'}); convert them to safetensors yourself.")
    return candidates


def _load_pickle(path: Path) -> dict[str, Any]:
    import torch

    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickle files cannot be memory-mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects: that is the point
        raise UsageError(f"{path.name} cannot be loaded safely (weights_only=True: {type(exc).__name__}); it may contain code, so convert it yourself.") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path.name} is not a plain state dict of tensors; convert it to safetensors yourself.")
    return state


def materialize_pickles(folder: Path, repo_id: str, commit: str | None) -> Path:
    """Rewrite pickled ``pytorch_model*.bin`` weights as safetensors (once, cached per repo and commit)."""
    from safetensors.torch import save_file

    from .writer import atomic_folder

    key = commit or folder.name
    target = cache_root() / "pickle" / f"{repo_id.replace('/', '--')}-{key}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    names = _pickle_files(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(target, overwrite=True) as tmp:
        for item in folder.iterdir():
            if item.is_file() and not item.name.endswith(".bin") and item.name != PICKLE_INDEX:
                shutil.copyfile(item, tmp / item.name)
        weight_map: dict[str, str] = {}
        total = 0
        for name in names:
            out_name = name.replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors"
            state = _load_pickle(folder / name)
            seen: set[tuple[int, int]] = set()
            tensors = {}
            for tensor_name, tensor in state.items():
                storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
                # tied weights share storage in a state dict; safetensors stores each tensor on its own
                tensors[tensor_name] = tensor.detach().clone().contiguous() if storage in seen else tensor.detach().contiguous()
                seen.add(storage)
                weight_map[tensor_name] = out_name
                total += tensor.numel() * tensor.element_size()
            save_file(tensors, str(tmp / out_name), metadata={"format": "pt"})
            del state, tensors
        if len(names) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return target
