"""Publishing a converted folder to the Hugging Face Hub, after checking its parity report.

One push is one commit: ``create_repo(exist_ok=True)``, ``create_branch`` when ``--revision`` names a
new branch, then a single ``create_commit`` holding every (non-hidden) file of the folder, the model
card rendered for the repo id, and deletions of stale weight files a previous push left behind.
``create_commit`` does not retry its POST, and it is pinned to the branch head seen before the upload
(``parent_commit``), so a concurrent change fails cleanly (412) instead of being overwritten. A push
whose answer was lost may still have landed: a rerun first compares the branch with the folder and,
when they already match, makes no second commit.

The token comes from the ``token`` argument, ``HF_TOKEN`` or the ``hf auth login`` token file and is
never printed, logged or put in an error message.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import CheckFailed, SeqclsError, UsageError
from .parity import REPORT_NAME, ParityReport, file_checksums

CARD_NAME = "README.md"
# Remote files a push replaces wholesale: weights (a new shard layout must not leave old shards behind)
# and the parity report (it must describe the weights next to it).
STALE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", REPORT_NAME)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass
class PushResult:
    """What ``push`` did: the commit (or the existing head when the repo was already up to date)."""

    repo_id: str
    revision: str
    commit_oid: str | None
    commit_url: str | None
    pr_url: str | None
    files: list[str]
    deleted: list[str] = field(default_factory=list)
    up_to_date: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_files(folder: Path) -> list[str]:
    """Relative paths of every file to publish (hidden files and folders are skipped)."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append(rel.as_posix())
    return found


def check_folder(folder: Path, force: bool = False) -> tuple[ParityReport | None, list[str]]:
    """Refuse a folder whose parity report is missing, failed or stale (CheckFailed) unless ``force``.

    Returns:
        (the report when it describes the current weights, else None; warnings about what was forced).
    """
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass the output folder of `seqcls convert`.")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} has no config.json; pass the output folder of `seqcls convert`.")
    current = file_checksums(folder)
    if not current:
        raise UsageError(f"{folder} has no .safetensors weights; pass the output folder of `seqcls convert`.")
    report: ParityReport | None = None
    problem = None
    if not (folder / REPORT_NAME).is_file():
        problem = f"{folder} has no {REPORT_NAME}, so it was never verified; run `seqcls verify {folder}` first"
    else:
        try:
            report = ParityReport.load(folder)
        except UsageError:
            problem = f"{folder / REPORT_NAME} is unreadable; run `seqcls verify {folder}` again"
        else:
            if report.checksums != current:
                names = sorted(n for n in set(current) | set(report.checksums) if current.get(n) != report.checksums.get(n))
                problem = f"the weights of {folder} changed after verification ({', '.join(names)}); run `seqcls verify {folder}` again"
                report = None
            elif not report.passed:
                problem = f"the parity report of {folder} says FAILED (max |diff| {report.max_abs_diff:.3g} > atol {report.atol:g}); fix the conversion and verify again"
    if problem is None:
        return report, []
    if not force:
        raise CheckFailed(f"Refusing to push: {problem}, or pass --force to publish anyway.")
    return report, [f"pushed with --force although {problem.split('; ')[0]}"]


def require_token(token: str | None = None) -> str:
    """The token to push with: ``token``, else ``HF_TOKEN``, else the ``hf auth login`` token file."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise UsageError("No Hugging Face token found; run `hf auth login` or set HF_TOKEN.")
    return found


def require_online() -> None:
    from .io.hub import is_offline

    if is_offline():
        raise UsageError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (or set HF_HUB_OFFLINE=0) and rerun.")


def _git_blob_sha1(path: Path | None, data: bytes | None) -> str:
    content = data if data is not None else path.read_bytes()  # type: ignore[union-attr]
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _sha256(path: Path | None, data: bytes | None) -> str:
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # type: ignore[arg-type]
        for chunk in iter(lambda: fh.read(16 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_content(remote: Any, path: Path | None, data: bytes | None) -> bool:
    size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
    if getattr(remote, "size", None) != size:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None and getattr(lfs, "sha256", None):
        return lfs.sha256 == _sha256(path, data)
    return getattr(remote, "blob_id", None) == _git_blob_sha1(path, data)


def _render_card(folder: Path, report: ParityReport | None, repo_id: str) -> tuple[bytes | None, list[str]]:
    """The model card for ``repo_id``; the existing card's license is kept (its front matter is read)."""
    from .card import render_card

    try:
        return render_card(folder, report, source_folder=folder, repo_id=repo_id).encode("utf-8"), []
    except (OSError, ValueError, KeyError, SeqclsError) as exc:
        if (folder / CARD_NAME).is_file():
            return None, [f"the model card could not be rendered for {repo_id} ({type(exc).__name__}); the folder's README.md was pushed as is"]
        return None, [f"the model card could not be rendered ({type(exc).__name__}); pushed without README.md"]


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _commit_message(folder: Path) -> str:
    import json

    try:
        prov = json.loads((folder / "config.json").read_text()).get("seqcls") or {}
    except (OSError, ValueError, AttributeError):
        prov = {}
    if prov.get("source"):
        return f"Upload {prov['source']} converted to sequence classification with seqcls (recipe {prov.get('recipe')})"
    return f"Upload {folder.name} with seqcls"


def _commit_description(report: ParityReport | None, warnings: list[str]) -> str:
    lines = []
    if report is not None:
        lines.append(f"Parity {'passed' if report.passed else 'FAILED'}: max |converted - original| = {report.max_abs_diff:.3g} "
                     f"(atol {report.atol:g}) over {len(report.pairs)} pairs against {report.source}.")
    lines += [f"Warning: {w}." for w in warnings]
    return "\n".join(lines)


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    force: bool = False,
    token: str | None = None,
) -> PushResult:
    """Publish a verified converted folder to the Hub in one commit.

    Args:
        folder: a folder written (and verified) by ``seqcls convert``.
        repo_id: ``namespace/name``; created when missing (``private`` applies only then).
        private: create the repo as private.
        revision: the branch to push to (created from ``main`` when missing); default ``main``.
        commit_message: the commit title (default: names the source and the recipe).
        create_pr: open a pull request against the branch instead of committing to it.
        force: push even when the parity report is missing, failed or stale.
        token: a Hub token; default ``HF_TOKEN`` or the ``hf auth login`` token.

    Returns:
        PushResult (``up_to_date`` when the branch already held exactly these files: no commit made).

    Raises:
        CheckFailed: the parity report is missing, failed or does not match the weights (without ``force``).
        UsageError: no token, offline, auth (401/403), not found (404), conflicts (409/412) or a lost connection.

    Example:
        >>> seqcls.push("out", "me/Qwen3-Reranker-0.6B-seq-cls", private=True)
    """
    folder = Path(folder)
    report, warnings = check_folder(folder, force)
    if not _REPO_ID.match(repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise UsageError(f"Repo id {repo_id!r} is not valid; use namespace/name, e.g. me/my-reranker-seq-cls.")
    branch = revision or "main"
    if branch.startswith("refs/") or (len(branch) == 40 and all(c in "0123456789abcdef" for c in branch)):
        raise UsageError(f"--revision {branch!r} must be a branch name (a commit or ref cannot be pushed to); use --create-pr for a pull request.")
    secret = require_token(token)
    require_online()

    files = local_files(folder)
    card, card_warnings = _render_card(folder, report, repo_id)
    warnings += card_warnings
    stale_report = (folder / REPORT_NAME).is_file() and report is None
    if stale_report:
        files.remove(REPORT_NAME)
        warnings.append(f"{REPORT_NAME} does not describe these weights and was not pushed")
    if card is not None and CARD_NAME not in files:
        files.append(CARD_NAME)
        files.sort()
    contents: dict[str, tuple[Path | None, bytes | None]] = {
        name: ((None, card) if name == CARD_NAME and card is not None else (folder / name, None)) for name in files
    }

    from .io.hub import endpoint, network_errors

    url = endpoint()
    try:
        result = _push(url, secret, repo_id, branch, private, create_pr, contents, commit_message or _commit_message(folder),
                       _commit_description(report, warnings))
    except SeqclsError:
        raise
    except Exception as exc:
        raise _explain(exc, repo_id, branch, folder, url, secret, network_errors()) from None
    result.warnings = warnings
    if card is not None and _read(folder / CARD_NAME) != card:
        _write_atomic(folder / CARD_NAME, card)  # the local card now says what was published
    return result


def _push(url: str, token: str, repo_id: str, branch: str, private: bool, create_pr: bool,
          contents: dict[str, tuple[Path | None, bytes | None]], message: str, description: str) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=url, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    head = _branch_head(api, repo_id, branch)
    if head is None:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
        head = _branch_head(api, repo_id, branch)
    remote = {e.path: e for e in api.list_repo_tree(repo_id, revision=head or branch, recursive=True) if isinstance(e, RepoFile)}
    stale = sorted(p for p in remote if p not in contents and any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pat) for pat in STALE_PATTERNS))
    changed = [name for name, (path, data) in contents.items() if name not in remote or not _same_content(remote[name], path, data)]
    names = sorted(contents)
    if not changed and not stale:
        commit_url = f"{url}/{repo_id}/commit/{head}" if head else None
        return PushResult(repo_id, branch, head, commit_url, None, names, [], up_to_date=True)
    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data if data is not None else str(path))
        for name, (path, data) in sorted(contents.items())
    ]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    info = api.create_commit(
        repo_id, operations, commit_message=message, commit_description=description or None, revision=branch,
        create_pr=create_pr, parent_commit=head, repo_type="model",
    )
    return PushResult(repo_id, branch, info.oid, info.commit_url, info.pr_url, names, stale)


def _branch_head(api: Any, repo_id: str, branch: str) -> str | None:
    refs = api.list_repo_refs(repo_id, repo_type="model")
    for ref in refs.branches:
        if ref.name == branch or ref.ref == f"refs/heads/{branch}":
            return ref.target_commit
    return None


def _explain(exc: Exception, repo_id: str, branch: str, folder: Path, url: str, token: str, transport: tuple) -> SeqclsError:
    """One sentence with the fix for a failed push (never containing the token)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    host = urlsplit(url).netloc or url
    rerun = f"{folder} is unchanged and retrying the push is safe"
    if isinstance(exc, OfflineModeIsEnabled):
        return UsageError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (or set HF_HUB_OFFLINE=0) and rerun.")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        detail = _redact((exc.server_message or "").strip().splitlines()[0] if exc.server_message else "", token)
        detail = f": {detail.rstrip('.')}" if detail else ""
        if status == 401:
            return UsageError(f"The Hub at {host} rejected the token (401 Unauthorized); run `hf auth login` again or set a valid HF_TOKEN.")
        if status == 403:
            return UsageError(f"Your token may not write to {repo_id} (403 Forbidden{detail}); push to a namespace you own or belong to, or use a token with write access.")
        if status == 404:
            return UsageError(f"{repo_id} (branch {branch}) was not found with your token (404); check --repo-id and --revision, and that the token can see the repo.")
        if status == 409:
            return UsageError(f"The Hub refused the push to {repo_id} because of a conflict (409{detail}); wait for other operations on the repo to finish, then rerun.")
        if status == 412:
            return UsageError(f"{repo_id}@{branch} changed while pushing (412), so nothing was committed; rerun to push on top of the new head.")
        return UsageError(f"Pushing to {repo_id} failed ({status or 'no response'}{detail}); {rerun}.")
    if isinstance(exc, transport):
        return UsageError(f"Lost the connection to {host} while pushing to {repo_id} ({type(exc).__name__}); {rerun}: files already on the Hub are not committed twice.")
    if isinstance(exc, ValueError):
        return UsageError(f"The Hub client refused the push to {repo_id}: {_redact(str(exc), token).splitlines()[0]}; fix the argument and rerun.")
    return UsageError(f"Pushing to {repo_id} failed ({type(exc).__name__}: {_redact(str(exc), token).splitlines()[0] if str(exc) else ''}); {rerun}.")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.seqcls-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
