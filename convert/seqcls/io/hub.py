"""Downloading sources from the Hugging Face Hub (uploading lives in publish.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .sources import HUB_PATTERNS

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt"]


def split_repo_spec(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    repo_id, _, rev = spec.partition("@")
    return repo_id, (rev or revision)


def download(spec: str, revision: str | None = None, allow_pickle: bool = False) -> tuple[Path, str | None]:
    """snapshot_download limited to safetensors/config/tokenizer files; returns (folder, commit sha)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, rev = split_repo_spec(spec, revision)
    patterns = HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        folder = Path(snapshot_download(repo_id, revision=rev, allow_patterns=patterns))
    except GatedRepoError as exc:
        raise UsageError(f"{repo_id} is gated; accept its terms on the Hub and log in with `hf auth login` or set HF_TOKEN.") from exc
    except RepositoryNotFoundError as exc:
        raise UsageError(f"Hub repo {repo_id} not found (or private); check the id, or log in with `hf auth login` / set HF_TOKEN.") from exc
    except RevisionNotFoundError as exc:
        raise UsageError(f"Revision {rev!r} not found in {repo_id}; check the branch, tag or commit.") from exc
    except LocalEntryNotFoundError as exc:
        raise UsageError(f"{repo_id} is not in the local cache and the Hub cannot be reached (offline?); connect or unset HF_HUB_OFFLINE.") from exc
    except HfHubHTTPError as exc:
        raise UsageError(f"Downloading {repo_id} failed ({exc.response.status_code if exc.response is not None else 'no response'}); retry or check your access.") from exc
    except OSError as exc:
        raise UsageError(f"Downloading {repo_id} failed ({exc}); check your connection and HF_ENDPOINT.") from exc
    commit = folder.name if len(folder.name) == 40 else rev
    return folder, commit
