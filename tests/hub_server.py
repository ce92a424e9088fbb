"""A small, real HTTP server that speaks the Hugging Face Hub protocol, for tests.

`LocalHub` implements the subset of the Hub's HTTP API that the *unmodified* ``huggingface_hub``
client (written against v2.4, tolerant of older 0.2x/1.x clients) uses to create repos, push commits
(regular and LFS files), and download files / snapshots. Standard library only.

Quick start (in-process)::

    from hub_server import LocalHub
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    with LocalHub(tokens={"hf_test_token": "tester"}, orgs={"org": ["tester"]}) as hub:
        api = HfApi(endpoint=hub.url, token="hf_test_token")
        api.create_repo("org/name")
        api.upload_folder(repo_id="org/name", folder_path="out/")
        path = hf_hub_download("org/name", "config.json", endpoint=hub.url, cache_dir=tmp / "hub")
        assert hub.files("org/name")["config.json"] == open("out/config.json", "rb").read()

Pointing the client at the server
---------------------------------
``huggingface_hub`` reads ``HF_ENDPOINT`` (and ``HF_HOME``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET``...) **once, at
import time** (``huggingface_hub.constants``). So:

* Preferred, in-process: pass ``endpoint=hub.url`` explicitly: ``HfApi(endpoint=hub.url, token=...)``,
  ``hf_hub_download(..., endpoint=hub.url)``, ``snapshot_download(..., endpoint=hub.url)``. Also pass
  ``cache_dir=`` (the cache location was also fixed at import time) and ``token=`` / ``token=False``
  (otherwise the client picks ``HF_TOKEN`` or the token file of the machine).
* In-process code that calls the client **without** an endpoint argument (module-level helpers such as
  ``huggingface_hub.upload_folder`` / ``hf_hub_download``, ``transformers``' ``from_pretrained`` ...): use
  ``hub.patch_client(monkeypatch)`` (or ``with hub.patch_client():``). It patches
  ``huggingface_hub.constants.ENDPOINT``, ``huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE``,
  the module-level ``HfApi`` instance behind ``huggingface_hub.create_repo``/``upload_folder``/...
  (``huggingface_hub.hf_api.api.endpoint``) and sets ``os.environ["HF_ENDPOINT"]``. ``HfApi()`` objects
  created *before* the patch keep their old endpoint.
* Subprocesses: set the environment *before* the child starts: ``env = {**os.environ, **hub.env(hf_home)}``
  which gives ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE=0``, ``TRANSFORMERS_OFFLINE=0``,
  ``HF_HUB_DISABLE_TELEMETRY=1`` (and ``HF_TOKEN`` if asked).
* Offline mode: ``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1`` before huggingface_hub is imported, which makes
  every client request raise ``OfflineModeIsEnabled``. Tests that talk to a LocalHub in-process must turn it
  off: ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)`` (read at call time;
  ``patch_client`` does it too). ``hub.env()`` sets ``HF_HUB_OFFLINE=0`` for subprocesses.

Upload modes / Xet
------------------
``huggingface_hub`` >= 1.x uploads every file the server classifies as "lfs" through the **Xet** protocol
whenever the ``hf_xet`` package is installed (there is no fallback to the LFS batch API in that case; see
``_commit_api._upload_files`` and ``_upload_pipeline``). This server does not implement Xet (a CAS
server). Therefore:

* ``upload_mode="regular"`` (default): the preupload endpoint answers ``"regular"`` for every file, so
  the client sends all contents base64-encoded inside the NDJSON commit. Works with every client version,
  with or without ``hf_xet``. Files are still *stored* and *served* like the real Hub would: paths matching
  the repo's ``.gitattributes`` LFS patterns (``*.safetensors``, ``*.bin``, ...) or >= 10 MiB are LFS files
  (tree/paths-info carry ``lfs`` info, ``/resolve`` answers 302 to a signed CDN URL with ``X-Linked-Etag`` =
  sha256 and ``X-Linked-Size``).
* ``upload_mode="lfs"``: LFS-pattern / large / binary files get ``"lfs"``; the client must then use the LFS
  batch API (basic transfer: a single PUT to this server). Only works when Xet is disabled client-side:
  ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)`` in-process (it is read at
  call time) or ``HF_HUB_DISABLE_XET=1`` in a subprocess environment, or ``hf_xet`` not installed. The
  Xet token endpoints answer 400 with an explicit message.

Downloads never use Xet: ``/resolve`` responses carry no ``X-Xet-Hash`` header.

Server behaviour summary
------------------------
* Auth: ``Authorization: Bearer <token>`` with tokens given to the constructor (``{token: user}`` or
  ``{token: (user, "read")}``). Unknown token -> 401 ("Invalid credentials in Authorization header"), on any
  endpoint. Write without token -> 401; write to a namespace you don't own (user or org member) -> 403;
  reading a private/missing repo -> 401 (anonymous) or 404 (authenticated) with ``X-Error-Code: RepoNotFound``.
* Repos: model, dataset and space repos. ``create_repo`` creates an initial commit with the Hub's default
  ``.gitattributes`` (like the real Hub). Existing repo -> 409 (the client turns it into success with
  ``exist_ok=True``).
* Git-like storage: each commit is a full snapshot ``{path: entry}``; contents are stored once by sha256
  under ``root/objects``; repo state is written atomically as JSON under ``root/repos``. Commit ids are
  40-hex. Branches, tags, ``refs/pr/N`` pull requests (``create_pr=True``, ``create_pull_request``,
  merge), ``parentCommit`` check (412).
* Commits are atomic: the request body is fully received and validated before anything changes; a dropped
  connection or an invalid operation leaves the repo untouched.
* Failure injection: ``fail_next()`` / ``drop_connection()`` / ``drop_connection_after()``.
* No request header is ever logged (tokens never appear in ``hub.log`` or in printed logs).

Standalone: ``python tests/hub_server.py --port 8080 --root /tmp/hub --token hf_test_token=tester``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["LocalHub", "DEFAULT_GITATTRIBUTES"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub requires LFS for files >= 10 MB
SIGNED_URL_TTL = 3600
CHUNK = 1 << 20

DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- helpers


def _now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _gitattributes_lfs_patterns(content: bytes | None) -> list[str]:
    if not content:
        return []
    patterns = []
    for line in content.decode("utf-8", "replace").splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_any(path: str, patterns: Iterable[str]) -> bool:
    base = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.lstrip("/")
        if "/" in pattern.rstrip("/"):
            if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", "")):
                return True
        elif pattern.endswith("/"):
            if path.startswith(pattern) or f"/{pattern}" in f"/{path}":
                return True
        elif fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def _gitignore_patterns(content: str | bytes | None) -> list[str]:
    if not content:
        return []
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return [ln.strip() for ln in content.splitlines() if ln.strip() and not ln.strip().startswith(("#", "!"))]


def _validate_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise HubError(400, "Invalid path in commit operation")
    path = path.lstrip("/")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git" or "\0" in path:
        raise HubError(400, f"Invalid path: '{path}'")
    return path


def _header_safe(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")[:1000]


class HubError(Exception):
    """An HTTP error answered the way the Hub does (JSON body, X-Error-Code / X-Error-Message headers)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # additional JSON body fields


class _Drop(Exception):
    """Raised to abort the connection without answering."""


@dataclass
class _Fault:
    kind: str  # "status" | "drop"
    substring: str
    method: str | None
    times: int | None  # None = forever
    status: int = 500
    error_code: str | None = None
    message: str | None = None
    after_bytes: int = 0
    on: str = "request"  # for "drop": "request" (while receiving the body) or "response" (after processing)
    reset: bool = True  # for "drop": TCP RST (True) or orderly FIN (False)
    hits: int = 0


@dataclass
class _Response:
    status: int = 200
    headers: list | None = None
    body: bytes = b""
    file: tuple[str, int, int] | None = None  # (path, offset, length) streamed instead of `body`

    def length(self) -> int:
        return self.file[2] if self.file is not None else len(self.body)


def _json_response(data: Any, status: int = 200, content_type: str = "application/json") -> _Response:
    return _Response(status, [("Content-Type", content_type)], json.dumps(data).encode())


class _Request:
    def __init__(self, handler: "_Handler"):
        self.handler = handler
        self.method = handler.command
        split = urlsplit(handler.path)
        self.path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)
        # Split on the raw path first, then unquote each segment: revisions and tree paths are sent
        # percent-encoded with `safe=""` (e.g. "refs%2Fpr%2F1").
        self.segments = [unquote(s) for s in self.path.split("/")[1:]]
        if self.segments and self.segments[-1] == "" and len(self.segments) > 1:
            self.segments = self.segments[:-1]
        self.headers = handler.headers
        self.user: str | None = None
        self.role: str | None = None
        self.body_consumed = False
        self._body: bytes | None = None
        self.drop_after: int | None = None  # set when a "drop on request" fault matched
        self.drop_reset = True

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def qbool(self, name: str) -> bool:
        return (self.q(name, "") or "").lower() in ("1", "true", "yes")

    def iter_body(self) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked). Applies "drop" faults."""
        if self.body_consumed:
            raise RuntimeError("request body already consumed")
        self.body_consumed = True
        rfile = self.handler.rfile
        received = 0

        def _account(chunk: bytes) -> bytes:
            nonlocal received
            if self.drop_after is not None and received + len(chunk) >= self.drop_after:
                raise _Drop()
            received += len(chunk)
            return chunk

        if self.drop_after is not None and self.drop_after <= 0:
            raise _Drop()
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = rfile.readline(65537)
                if not line:
                    raise _Drop()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    data = rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise _Drop()
                    remaining -= len(data)
                    yield _account(data)
                rfile.readline(3)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = rfile.read(min(remaining, CHUNK))
                if not data:
                    raise _Drop()
                remaining -= len(data)
                yield _account(data)

    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.iter_body())
        return self._body

    def json(self) -> Any:
        raw = self.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise HubError(400, "Invalid JSON body")

    def drain(self) -> None:
        if not self.body_consumed:
            for _ in self.iter_body():
                pass


# --------------------------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    hub: "LocalHub"
    is_cdn = False

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    def log_message(self, format, *args):  # never log the raw request (only our own summary line)
        pass

    def finish(self):
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def _handle(self) -> None:
        hub = self.hub
        req = _Request(self)
        tag = "[cdn] " if self.is_cdn else ""
        if not self.is_cdn:
            hub._identify(req)  # for log lines only; the real check happens in _dispatch
        status = 0
        try:
            fault = hub._take_fault(req.method, req.path, phase="request", cdn=self.is_cdn)
            if fault is not None and fault.kind == "drop":
                req.drop_after = fault.after_bytes
                req.drop_reset = fault.reset
                req.drain()
                raise _Drop()
            if fault is not None:
                req.drain()
                raise HubError(fault.status, fault.message or f"Simulated error {fault.status}", fault.error_code)
            resp = hub._dispatch(req, cdn=self.is_cdn)
            req.drain()
        except _Drop:
            hub._log(f"{tag}{req.method} {req.path} -> connection dropped (user={req.user or '-'})")
            self._abort(reset=req.drop_reset)
            return
        except HubError as e:
            resp = hub._error_response(e)
            try:
                req.drain()
            except Exception:  # body could not be drained: don't reuse the connection
                self.close_connection = True
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True
            return
        except Exception as e:  # pragma: no cover - server bug => 500, logged
            hub._log(f"{tag}{req.method} {req.path} -> 500 internal error: {type(e).__name__}: {e}")
            resp = hub._error_response(HubError(500, f"Internal error: {type(e).__name__}: {e}"))
            self.close_connection = True
        status = resp.status
        drop = hub._take_fault(req.method, req.path, phase="response", cdn=self.is_cdn)
        try:
            self._send(resp, drop_after=drop.after_bytes if drop is not None else None)
        except _Drop:
            hub._log(f"{tag}{req.method} {req.path} -> {status}, response dropped (user={req.user or '-'})")
            self._abort(reset=drop.reset if drop is not None else True)
            return
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True
            return
        hub._log(f"{tag}{req.method} {req.path} -> {status} (user={req.user or '-'})")

    def _send(self, resp: _Response, drop_after: int | None) -> None:
        if drop_after is not None and drop_after <= 0:
            raise _Drop()
        self.send_response(resp.status)
        headers = list(resp.headers or [])
        names = {k.lower() for k, _ in headers}
        if "content-type" not in names:
            headers.append(("Content-Type", "application/json"))
        headers.append(("Content-Length", str(resp.length())))
        headers.append(("X-Request-Id", secrets.token_hex(8)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0

        def _write(data: bytes) -> None:
            nonlocal sent
            if drop_after is not None and sent + len(data) >= drop_after:
                self.wfile.write(data[: max(0, drop_after - sent)])
                self.wfile.flush()
                raise _Drop()
            self.wfile.write(data)
            sent += len(data)

        if resp.file is not None:
            path, offset, length = resp.file
            with open(path, "rb") as f:
                f.seek(offset)
                while length > 0:
                    data = f.read(min(CHUNK, length))
                    if not data:
                        break
                    length -= len(data)
                    _write(data)
        elif resp.body:
            _write(resp.body)

    def _abort(self, reset: bool = True) -> None:
        """Close the TCP connection without (completing) the HTTP response: RST if `reset`, else FIN."""
        self.close_connection = True
        sock = self.connection
        if reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        for f in (self.rfile, self.wfile):
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            sock.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, hub: "LocalHub"):
        self.hub = hub
        self.open_sockets: set = set()
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        with self.hub._lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.hub._lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError, OSError, ValueError)):
            self.hub._log(f"unhandled server error: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------- the hub


class LocalHub:
    """In-process (or standalone) fake of the Hugging Face Hub HTTP API. See module docstring.

    Args:
        tokens: ``{token: user}`` or ``{token: (user, "read" | "write")}``. Defaults to
            ``{"hf_test_token": "tester"}``.
        root: folder where repos and objects are stored (a temporary folder, removed on ``stop()``, if None).
        orgs: ``{org_name: [member, ...]}``; members can read/write repos of the org.
        host / port: where to bind (port 0 = a free port). A second listener on a free port of the same
            host plays the CDN that LFS downloads are redirected to (``cdn_port``).
        upload_mode: "regular" (default, works with any client) or "lfs" (needs Xet disabled client-side).
        lfs_redirect: answer ``/resolve`` of LFS files with a 302 to a signed CDN URL (like the real Hub).
            If False, LFS files are served directly with a 200 from ``/resolve``.
        tree_page_size: page size of ``/tree`` listings (``Link: <...>; rel="next"`` pagination).
        verbose: print one line per request to stderr (method, path, status, user; never headers).
        init_gitattributes: create repos with an initial ``.gitattributes`` commit, like the Hub does.
    """

    def __init__(
        self,
        tokens: dict[str, Any] | None = None,
        *,
        root: str | os.PathLike | None = None,
        orgs: dict[str, Iterable[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        upload_mode: str = "regular",
        lfs_redirect: bool = True,
        tree_page_size: int = 1000,
        verbose: bool = False,
        init_gitattributes: bool = True,
    ):
        if upload_mode not in ("regular", "lfs"):
            raise ValueError("upload_mode must be 'regular' or 'lfs'")
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[str, str]] = {}
        for token, value in (tokens if tokens is not None else {"hf_test_token": "tester"}).items():
            self.add_token(token, *((value,) if isinstance(value, str) else tuple(value)))
        self.orgs: dict[str, set[str]] = {org: set(members) for org, members in (orgs or {}).items()}
        self._owns_root = root is None
        self.root = str(root) if root is not None else tempfile.mkdtemp(prefix="localhub-")
        self.host = host
        self.port = port
        self.cdn_port = cdn_port
        self.upload_mode = upload_mode
        self.lfs_redirect = lfs_redirect
        self.tree_page_size = tree_page_size
        self.verbose = verbose
        self.init_gitattributes = init_gitattributes
        self.log: list[str] = []  # one line per request: "METHOD /path -> status (user=...)"
        self._faults: list[_Fault] = []
        self._repos: dict[tuple[str, str], dict] = {}
        self._secret = secrets.token_bytes(32)
        self._counter = 0
        self._sha1_cache: dict[str, str] = {}
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._tl = threading.local()  # per-request base URLs (derived from the Host header)
        self.url: str | None = None
        self.cdn_url: str | None = None
        os.makedirs(os.path.join(self.root, "objects"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "repos"), exist_ok=True)
        self._load_state()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start serving in background threads; returns the base URL (e.g. ``http://127.0.0.1:PORT``)."""
        if self.url is not None:
            return self.url
        for is_cdn, port in ((False, self.port), (True, self.cdn_port)):
            handler = type("Handler", (_Handler,), {"hub": self, "is_cdn": is_cdn})
            server = _Server((self.host, port), handler, self)
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="localhub"
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self.port = self._servers[0].server_address[1]
        self.cdn_port = self._servers[1].server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.cdn_url = f"http://{host}:{self.cdn_port}"
        return self.url

    def stop(self) -> None:
        """Stop the servers, close open connections, and delete ``root`` if it was a temporary folder."""
        for server in self._servers:
            server.shutdown()
            with self._lock:
                sockets = list(server.open_sockets)
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self.url = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalHub":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self.url is None:
            raise RuntimeError("LocalHub is not started")
        return self.url

    # ------------------------------------------------------------------ configuration helpers

    def add_token(self, token: str, user: str, role: str = "write") -> None:
        if role not in ("read", "write"):
            raise ValueError("role must be 'read' or 'write'")
        with self._lock:
            self._tokens[token] = (user, role)

    def env(self, hf_home: str | os.PathLike | None = None, token: str | None = None) -> dict[str, str]:
        """Environment variables to give a subprocess so that its huggingface_hub talks to this hub."""
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_OFFLINE": "0",  # tests/conftest.py defaults to offline; the child must reach this hub
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        }
        if hf_home is not None:
            env["HF_HOME"] = str(hf_home)
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    @contextlib.contextmanager
    def patch_client(self, monkeypatch: Any = None) -> Iterator[None]:
        """Point the already-imported huggingface_hub at this hub (for code that passes no endpoint).

        Patches ``constants.ENDPOINT``, ``constants.HUGGINGFACE_CO_URL_TEMPLATE``, the module-level ``HfApi``
        (``huggingface_hub.hf_api.api.endpoint``), turns ``constants.HF_HUB_OFFLINE`` off and sets
        ``os.environ["HF_ENDPOINT"]``.

        With a pytest ``monkeypatch``, patches are undone by pytest at teardown (and also on exit of the
        ``with`` block if used as a context manager); without it, they are undone when the block exits.
        """
        from huggingface_hub import constants, hf_api

        url = self.endpoint
        targets = [
            (constants, "HF_HUB_OFFLINE", False),  # is_offline_mode() reads it at call time
            (constants, "ENDPOINT", url),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"),
            (hf_api.api, "endpoint", url),
        ]
        if monkeypatch is not None:
            for obj, name, value in targets:
                monkeypatch.setattr(obj, name, value)
            monkeypatch.setenv("HF_ENDPOINT", url)
            yield
            return
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
        saved_env = os.environ.get("HF_ENDPOINT")
        try:
            for obj, name, value in targets:
                setattr(obj, name, value)
            os.environ["HF_ENDPOINT"] = url
            yield
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
            if saved_env is None:
                os.environ.pop("HF_ENDPOINT", None)
            else:
                os.environ["HF_ENDPOINT"] = saved_env

    # ------------------------------------------------------------------ failure injection

    def fail_next(
        self,
        path_substring: str = "",
        status: int = 500,
        *,
        method: str | None = None,
        times: int | None = 1,
        error_code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `times` requests whose path contains `path_substring` (and method, if given) with
        `status` (body and X-Error-Message = `message`, X-Error-Code = `error_code`) without processing them.
        `times=None` means forever (until ``clear_faults()``). Note that the client retries 429/5xx."""
        with self._lock:
            self._faults.append(
                _Fault("status", path_substring, method.upper() if method else None, times, status, error_code, message)
            )

    def drop_connection(
        self,
        path_substring: str = "",
        *,
        method: str | None = None,
        after_bytes: int = 0,
        times: int | None = 1,
        on: str = "request",
        reset: bool = True,
    ) -> None:
        """Abruptly close the TCP connection for the next `times` matching request(s) (None = forever).

        on="request": after receiving `after_bytes` bytes of the request body (or at its end if it is
            shorter); nothing is processed, so the repo is unchanged. on="response": the request IS processed
            (e.g. the commit is applied) and the connection is closed after sending `after_bytes` bytes of the
            response (0 = before the status line: a lost response; N>0 cuts a download mid-body).
        reset=True closes with a TCP RST (client sees "connection reset" / ReadError / WriteError);
        reset=False with an orderly FIN (client sees "server disconnected" / incomplete body, i.e.
        httpx RemoteProtocolError, which is what huggingface_hub's download-resume logic catches).
        """
        if on not in ("request", "response"):
            raise ValueError("on must be 'request' or 'response'")
        with self._lock:
            self._faults.append(
                _Fault("drop", path_substring, method.upper() if method else None, times, after_bytes=after_bytes,
                       on=on, reset=reset)
            )

    def drop_connection_after(
        self,
        n_bytes: int,
        path_substring: str = "",
        *,
        method: str | None = None,
        times: int | None = 1,
        reset: bool = True,
    ) -> None:
        """Shortcut: drop the connection after receiving `n_bytes` of the body of the next matching request."""
        self.drop_connection(path_substring, method=method, after_bytes=n_bytes, times=times, on="request", reset=reset)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def _take_fault(self, method: str, path: str, *, phase: str, cdn: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.substring not in path or (fault.method and fault.method != method):
                    continue
                if phase == "request" and fault.kind == "drop" and fault.on != "request":
                    continue
                if phase == "response" and not (fault.kind == "drop" and fault.on == "response"):
                    continue
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # ------------------------------------------------------------------ inspection helpers for tests

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def repo_ids(self, repo_type: str | None = None) -> list[str]:
        with self._lock:
            return sorted(rid for (rtype, rid) in self._repos if repo_type in (None, rtype))

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return bool(self._get_repo_raw(repo_type, repo_id)["private"])

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Content of every file of `repo_id` at `revision` (branch, tag, refs/pr/N or commit id)."""
        with self._lock:
            repo = self._get_repo_raw(repo_type, repo_id)
            tree = dict(repo["commits"][self._resolve(repo, revision)]["files"])
        return {path: self._read_object(entry["sha256"]) for path, entry in sorted(tree.items())}

    def file_entries(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, dict]:
        """``{path: {"sha256", "size", "lfs", "oid"}}`` at `revision` (``lfs`` tells how the Hub stores it)."""
        with self._lock:
            repo = self._get_repo_raw(repo_type, repo_id)
            return {p: dict(e) for p, e in repo["commits"][self._resolve(repo, revision)]["files"].items()}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[dict]:
        """History of `revision`, newest first: dicts with id, parents, title, message, author, date, files."""
        with self._lock:
            repo = self._get_repo_raw(repo_type, repo_id)
            return [
                {**{k: v for k, v in c.items() if k != "files"}, "files": sorted(c["files"])}
                for c in self._history(repo, self._resolve(repo, revision))
            ]

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """``{"refs/heads/main": commit_id, "refs/pr/1": ..., "refs/tags/v1": ...}``."""
        with self._lock:
            return dict(self._get_repo_raw(repo_type, repo_id)["refs"])

    def discussions(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        with self._lock:
            return [dict(d) for d in self._get_repo_raw(repo_type, repo_id)["discussions"]]

    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes | str] | None = None,
        *,
        repo_type: str = "model",
        private: bool = False,
        revision: str = "main",
        message: str = "seed",
        author: str = "localhub",
    ) -> str:
        """Create `repo_id` if needed and commit `files` directly (bypassing HTTP). Returns the commit id."""
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                self._create_repo_raw(repo_type, repo_id, private=private, author=author)
            repo = self._repos[(repo_type, repo_id)]
            ref = self._branch_ref(repo, revision)
            tree = dict(repo["commits"][repo["refs"][ref]]["files"])
            touched = set()
            for path, content in (files or {}).items():
                data = content.encode() if isinstance(content, str) else content
                path = _validate_path(path)
                tree[path] = self._make_entry(data=data)
                touched.add(path)
            self._finalize_lfs_flags(tree, set(tree) if ".gitattributes" in touched else touched)
            cid = self._new_commit(repo, ref, tree, message, "", author)
            self._save_repo(repo)
            return cid

    # ------------------------------------------------------------------ storage

    def _object_path(self, sha256: str) -> str:
        return os.path.join(self.root, "objects", sha256[:2], sha256[2:])

    def _has_object(self, sha256: str) -> bool:
        return bool(_HEX64.match(sha256 or "")) and os.path.exists(self._object_path(sha256))

    def _put_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self._object_path(sha)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha

    def _read_object(self, sha256: str) -> bytes:
        with open(self._object_path(sha256), "rb") as f:
            return f.read()

    def _content_sha1(self, sha256: str) -> str:
        if sha256 not in self._sha1_cache:
            self._sha1_cache[sha256] = _git_blob_sha1(self._read_object(sha256))
        return self._sha1_cache[sha256]

    def _make_entry(self, *, data: bytes | None = None, sha256: str | None = None, lfs: bool = False) -> dict:
        if data is not None:
            sha256 = self._put_object(data)
            self._sha1_cache[sha256] = _git_blob_sha1(data)
        assert sha256 is not None
        size = os.path.getsize(self._object_path(sha256))
        return {"sha256": sha256, "size": size, "lfs": lfs}

    def _finalize_lfs_flags(self, tree: dict, touched: set[str]) -> None:
        """Decide how the Hub would store newly written regular files (LFS patterns / size), set git oids."""
        gitattributes = tree.get(".gitattributes")
        patterns = _gitattributes_lfs_patterns(self._read_object(gitattributes["sha256"]) if gitattributes else None)
        for path in touched:
            entry = tree.get(path)
            if entry is None:
                continue
            if not entry["lfs"] and (entry["size"] >= LFS_SIZE_THRESHOLD or _matches_any(path, patterns)):
                entry["lfs"] = True
            if entry["lfs"]:
                entry["oid"] = _git_blob_sha1(_lfs_pointer(entry["sha256"], entry["size"]))
            else:
                entry["oid"] = self._content_sha1(entry["sha256"])

    def _repo_dir(self, repo_type: str, repo_id: str) -> str:
        return os.path.join(self.root, "repos", repo_type, *repo_id.split("/"))

    def _save_repo(self, repo: dict) -> None:
        folder = self._repo_dir(repo["type"], repo["id"])
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(repo, f)
        os.replace(tmp, os.path.join(folder, "repo.json"))

    def _load_state(self) -> None:
        base = os.path.join(self.root, "repos")
        for dirpath, _, filenames in os.walk(base):
            if "repo.json" in filenames:
                with open(os.path.join(dirpath, "repo.json")) as f:
                    repo = json.load(f)
                self._repos[(repo["type"], repo["id"])] = repo

    def _create_repo_raw(self, repo_type: str, repo_id: str, *, private: bool, author: str, sdk=None) -> dict:
        repo = {
            "type": repo_type,
            "id": repo_id,
            "private": bool(private),
            "created_at": _now_iso(),
            "object_id": secrets.token_hex(12),
            "sdk": sdk,
            "refs": {},
            "commits": {},
            "discussions": [],
        }
        tree: dict = {}
        if self.init_gitattributes:
            tree[".gitattributes"] = self._make_entry(data=DEFAULT_GITATTRIBUTES.encode())
            self._finalize_lfs_flags(tree, {".gitattributes"})
        self._new_commit(repo, "refs/heads/main", tree, "initial commit", "", author, parents=[])
        self._repos[(repo_type, repo_id)] = repo
        self._save_repo(repo)
        return repo

    def _new_commit(
        self, repo: dict, ref: str, tree: dict, title: str, message: str, author: str, parents: list | None = None
    ) -> str:
        if parents is None:
            parents = [repo["refs"][ref]] if ref in repo["refs"] else []
        self._counter += 1
        date = _now_iso()
        digest = json.dumps([parents, sorted((p, e["sha256"]) for p, e in tree.items()), title, message, date,
                             self._counter, time.time_ns()])
        cid = hashlib.sha1(digest.encode()).hexdigest()
        repo["commits"][cid] = {
            "id": cid,
            "parents": parents,
            "title": title,
            "message": message,
            "author": author,
            "date": date,
            "files": tree,
        }
        repo["refs"][ref] = cid
        return cid

    # ------------------------------------------------------------------ repo / revision resolution

    def _get_repo_raw(self, repo_type: str, repo_id: str) -> dict:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"{repo_type} repo {repo_id!r} does not exist")
        return repo

    @staticmethod
    def _branch_ref(repo: dict, revision: str) -> str:
        """Ref name a commit can be pushed to (branch or PR). Raises RevisionNotFound."""
        for ref in (revision, f"refs/heads/{revision}"):
            if ref in repo["refs"] and (ref.startswith("refs/heads/") or ref.startswith("refs/pr/")):
                return ref
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _resolve(repo: dict, revision: str) -> str:
        refs = repo["refs"]
        for ref in (f"refs/heads/{revision}", f"refs/tags/{revision}", revision):
            if ref in refs:
                return refs[ref]
        if revision in repo["commits"]:
            return revision
        if re.fullmatch(r"[0-9a-f]{7,39}", revision or ""):
            matches = [cid for cid in repo["commits"] if cid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _history(repo: dict, cid: str) -> list[dict]:
        out = []
        seen = set()
        while cid and cid not in seen:
            seen.add(cid)
            commit = repo["commits"][cid]
            out.append(commit)
            cid = commit["parents"][0] if commit["parents"] else None
        return out

    # ------------------------------------------------------------------ auth

    def _identify(self, req: _Request) -> None:
        with contextlib.suppress(HubError):
            self._authenticate(req)

    def _authenticate(self, req: _Request) -> None:
        auth = req.headers.get("Authorization")
        if not auth:
            return
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        with self._lock:
            found = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if found is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        req.user, req.role = found

    def _can_write_ns(self, user: str | None, role: str | None, namespace: str) -> bool:
        return user is not None and role == "write" and (user == namespace or user in self.orgs.get(namespace, ()))

    def _can_read(self, user: str | None, repo: dict) -> bool:
        if not repo["private"]:
            return True
        namespace = repo["id"].split("/")[0]
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _repo_for(self, req: _Request, repo_type: str, repo_id: str, *, write: bool = False) -> dict:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or not self._can_read(req.user, repo):
            # Like the Hub: anonymous => 401, authenticated => 404; both with X-Error-Code: RepoNotFound.
            status = 401 if req.user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        if write:
            if req.user is None:
                raise HubError(401, "You must be authenticated to write to this repository")
            if not self._can_write_ns(req.user, req.role, repo_id.split("/")[0]):
                raise HubError(403, f"You don't have the rights to write to {repo_type} repo {repo_id}")
        return repo

    # ------------------------------------------------------------------ URLs

    def _base(self) -> str:
        return getattr(self._tl, "base", None) or self.url

    def _cdn_base(self) -> str:
        return getattr(self._tl, "cdn_base", None) or self.cdn_url

    def _set_request_base(self, req: _Request) -> None:
        host = req.headers.get("Host")
        self._tl.base = self._tl.cdn_base = None
        if host and re.fullmatch(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?", host):
            hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            self._tl.base = f"http://{host}"
            self._tl.cdn_base = f"http://{hostname}:{self.cdn_port}"

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self._base()}/{URL_PREFIXES[repo_type]}{repo_id}"

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def _signed_cdn_url(self, sha256: str, filename: str) -> str:
        exp = str(int(time.time()) + SIGNED_URL_TTL)
        name = quote(filename.rsplit("/", 1)[-1], safe="")
        return f"{self._cdn_base()}/lfs/{sha256}?name={name}&exp={exp}&sig={self._sign('get', sha256, exp)}"

    def _signed_upload_url(self, sha256: str, size: int) -> str:
        exp = str(int(time.time()) + SIGNED_URL_TTL)
        return f"{self._base()}/__lfs/upload/{sha256}?size={size}&exp={exp}&sig={self._sign('put', sha256, str(size), exp)}"

    def _check_sig(self, req: _Request, *parts: str) -> None:
        exp = req.q("exp") or "0"
        sig = req.q("sig") or ""
        if not exp.isdigit() or int(exp) < time.time() or not hmac.compare_digest(sig, self._sign(*parts, exp)):
            raise HubError(403, "Request has expired or signature is invalid")

    # ------------------------------------------------------------------ logging / errors

    def _log(self, line: str) -> None:
        with self._lock:
            self.log.append(line)
        if self.verbose:
            print(f"[localhub] {line}", file=sys.stderr, flush=True)

    @staticmethod
    def _error_response(e: HubError) -> _Response:
        headers = [("Content-Type", "application/json"), ("X-Error-Message", _header_safe(e.message))]
        if e.code:
            headers.append(("X-Error-Code", e.code))
        headers.extend(e.headers.items())
        return _Response(e.status, headers, json.dumps({**e.extra, "error": e.message}).encode())

    # ------------------------------------------------------------------ routing

    def _dispatch(self, req: _Request, cdn: bool) -> _Response:
        self._set_request_base(req)
        if cdn:
            return self._route_cdn(req)
        self._authenticate(req)
        seg = req.segments
        m = req.method
        if not seg or seg == [""]:
            return _json_response({"localhub": True, "url": self._base()})
        if seg[0] == "api" and len(seg) >= 2:
            head = seg[1]
            if head == "whoami-v2" and m == "GET":
                return self._whoami(req)
            if head == "agent-harnesses" and m == "GET":
                return _json_response({"standardEnvVars": [], "harnesses": {}})
            if head == "validate-yaml" and m == "POST":
                return self._validate_yaml(req)
            if head == "repos" and len(seg) == 3:
                if seg[2] == "create" and m == "POST":
                    return self._create_repo(req)
                if seg[2] == "delete" and m == "DELETE":
                    return self._delete_repo(req)
            if head in REPO_TYPES and len(seg) >= 4:
                return self._route_repo_api(req, REPO_TYPES[head], f"{seg[2]}/{seg[3]}", seg[4:])
            if head in REPO_TYPES and len(seg) == 3:
                raise HubError(401 if req.user is None else 404, "Repository not found", "RepoNotFound")
            raise HubError(404, f"Not found: {req.path}")
        if seg[0] == "__lfs" and len(seg) == 3 and seg[1] == "upload" and m == "PUT":
            return self._lfs_put(req, seg[2])
        # /[datasets/|spaces/]ns/name/resolve/rev/path  and  /[prefix]ns/name.git/info/lfs/objects/...
        repo_type = "model"
        rest = seg
        if seg[0] in REPO_TYPES and seg[0] != "models" and len(seg) > 1:
            repo_type, rest = REPO_TYPES[seg[0]], seg[1:]
        if len(rest) >= 5 and rest[2] == "resolve" and m in ("GET", "HEAD"):
            rev, path_parts = self._split_rev(rest[3:])
            return self._resolve_file(req, repo_type, f"{rest[0]}/{rest[1]}", rev, "/".join(path_parts))
        if len(rest) >= 3 and rest[1] == "resolve" and m in ("GET", "HEAD"):
            raise HubError(401 if req.user is None else 404, "Repository not found", "RepoNotFound")
        if len(rest) >= 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"] and m == "POST":
            repo_id = f"{rest[0]}/{rest[1][:-4]}"
            if rest[5] == "batch":
                return self._lfs_batch(req, repo_type, repo_id)
            if rest[5] == "verify":
                return self._lfs_verify(req, repo_type, repo_id)
        raise HubError(404, f"Not found: {req.path}")

    @staticmethod
    def _split_rev(parts: list[str]) -> tuple[str, list[str]]:
        """First segment(s) = revision. Accepts un-encoded "refs/pr/N"-style revisions as well."""
        if len(parts) >= 3 and parts[0] == "refs" and parts[1] in ("pr", "heads", "tags", "convert"):
            return "/".join(parts[:3]), parts[3:]
        return parts[0], parts[1:]

    def _route_repo_api(self, req: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        m = req.method
        action = rest[0] if rest else None
        if action is None and m == "GET":
            return self._repo_info(req, repo_type, repo_id, "main")
        if action == "revision" and len(rest) >= 2 and m == "GET":
            rev, _ = self._split_rev(rest[1:])
            return self._repo_info(req, repo_type, repo_id, rev)
        if action == "tree" and len(rest) >= 2 and m == "GET":
            rev, path_parts = self._split_rev(rest[1:])
            return self._tree(req, repo_type, repo_id, rev, "/".join(path_parts).strip("/"))
        if action == "paths-info" and len(rest) >= 2 and m == "POST":
            rev, _ = self._split_rev(rest[1:])
            return self._paths_info(req, repo_type, repo_id, rev)
        if action == "refs" and m == "GET":
            return self._list_refs(req, repo_type, repo_id)
        if action == "commits" and len(rest) >= 2 and m == "GET":
            rev, _ = self._split_rev(rest[1:])
            return self._list_commits(req, repo_type, repo_id, rev)
        if action == "preupload" and len(rest) >= 2 and m == "POST":
            rev, _ = self._split_rev(rest[1:])
            return self._preupload(req, repo_type, repo_id, rev)
        if action == "commit" and len(rest) >= 2 and m == "POST":
            rev, _ = self._split_rev(rest[1:])
            return self._commit(req, repo_type, repo_id, rev)
        if action == "branch" and len(rest) >= 2 and m in ("POST", "DELETE"):
            return self._branch(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "tag" and len(rest) >= 2 and m in ("POST", "DELETE"):
            return self._tag(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "discussions":
            return self._discussions(req, repo_type, repo_id, rest[1:])
        if action == "settings" and m == "PUT":
            return self._settings(req, repo_type, repo_id)
        if action in ("xet-write-token", "xet-read-token"):
            with self._lock:
                self._repo_for(req, repo_type, repo_id)
            raise HubError(
                400,
                "LocalHub does not implement the Xet protocol. Use LocalHub(upload_mode='regular') or disable Xet "
                "client-side (HF_HUB_DISABLE_XET=1 / huggingface_hub.constants.HF_HUB_DISABLE_XET = True).",
            )
        raise HubError(404, f"Not found: {req.path}")

    # ------------------------------------------------------------------ misc endpoints

    def _whoami(self, req: _Request) -> _Response:
        if req.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [
            {"type": "org", "name": org, "fullname": org, "roleInOrg": "write", "id": hashlib.md5(org.encode()).hexdigest()[:24]}
            for org, members in sorted(self.orgs.items())
            if req.user in members
        ]
        return _json_response(
            {
                "type": "user",
                "id": hashlib.md5(req.user.encode()).hexdigest()[:24],
                "name": req.user,
                "fullname": req.user,
                "email": f"{req.user}@localhub.invalid",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "avatarUrl": "",
                "orgs": orgs,
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "localhub", "role": req.role, "createdAt": _now_iso()},
                },
            }
        )

    def _validate_yaml(self, req: _Request) -> _Response:
        content = (req.json() or {}).get("content") or ""
        errors = []
        if content.startswith("---"):
            match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
            if match is None:
                errors.append({"message": "Unterminated YAML metadata block"})
            else:
                try:
                    import yaml  # optional

                    data = yaml.safe_load(match.group(1))
                    if data is not None and not isinstance(data, dict):
                        errors.append({"message": "YAML metadata must be a mapping"})
                except ImportError:
                    pass
                except Exception as e:  # yaml.YAMLError
                    errors.append({"message": f"Invalid YAML: {e}"})
        if errors:
            return _json_response({"errors": errors, "warnings": []}, status=400)
        return _json_response({"errors": [], "warnings": []})

    def _create_repo(self, req: _Request) -> _Response:
        payload = req.json()
        if req.user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        name = payload.get("name")
        namespace = payload.get("organization") or req.user
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        if not isinstance(name, str) or not _NAME_RE.match(name) or "--" in name or ".." in name or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name: {name!r}")
        if not self._can_write_ns(req.user, req.role, namespace):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace \"{namespace}\"")
        repo_id = f"{namespace}/{name}"
        visibility = payload.get("visibility")
        private = visibility in ("private", "protected") if visibility is not None else bool(payload.get("private"))
        url = self._repo_url(repo_type, repo_id)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                # The client reads "url" from the 409 body when exist_ok=True.
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            self._create_repo_raw(repo_type, repo_id, private=private, author=req.user, sdk=payload.get("sdk"))
        return _json_response({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: _Request) -> _Response:
        payload = req.json()
        namespace = payload.get("organization") or req.user
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload.get('name')}"
        with self._lock:
            self._repo_for(req, repo_type, repo_id, write=True)
            del self._repos[(repo_type, repo_id)]
            shutil.rmtree(self._repo_dir(repo_type, repo_id), ignore_errors=True)
        return _json_response({})

    def _settings(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        payload = req.json()
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id, write=True)
            if "private" in payload:
                repo["private"] = bool(payload["private"])
            if "visibility" in payload:
                repo["private"] = payload["visibility"] in ("private", "protected")
            if "gated" in payload:
                repo["gated"] = payload["gated"]
            self._save_repo(repo)
        return _json_response({})

    # ------------------------------------------------------------------ info / listing

    def _repo_info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        blobs = req.qbool("blobs")
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id)
            cid = self._resolve(repo, revision)
            commit = repo["commits"][cid]
            tree = commit["files"]
            siblings = []
            for path in sorted(tree):
                entry = tree[path]
                sibling: dict = {"rfilename": path}
                if blobs:
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if entry["lfs"]:
                        pointer = _lfs_pointer(entry["sha256"], entry["size"])
                        sibling["lfs"] = {"size": entry["size"], "sha256": entry["sha256"], "pointerSize": len(pointer)}
                siblings.append(sibling)
            info: dict = {
                "_id": repo["object_id"],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": cid,
                "lastModified": commit["date"],
                "createdAt": repo["created_at"],
                "private": repo["private"],
                "gated": repo.get("gated", False),
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(e["size"] for e in tree.values()),
            }
            if repo_type == "model":
                info["modelId"] = repo_id
                info["spaces"] = []
                config_entry = tree.get("config.json")
                if config_entry is not None and not config_entry["lfs"]:
                    with contextlib.suppress(Exception):
                        config = json.loads(self._read_object(config_entry["sha256"]))
                        info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
            elif repo_type == "dataset":
                info["description"] = ""
                info["citation"] = ""
                info["paperswithcode_id"] = None
            elif repo_type == "space":
                info["sdk"] = repo.get("sdk")
                info["subdomain"] = repo_id.replace("/", "-")
        return _json_response(info)

    def _entry_json(self, repo: dict, cid: str, path: str, entry: dict | None, expand: bool) -> dict:
        if entry is None:  # directory
            data: dict = {"type": "directory", "oid": hashlib.sha1(f"{cid}:{path}".encode()).hexdigest(), "size": 0, "path": path}
        else:
            data = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                pointer = _lfs_pointer(entry["sha256"], entry["size"])
                data["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(pointer)}
        if expand:
            last = self._last_commit_touching(repo, cid, path, entry is None)
            data["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        return data

    def _last_commit_touching(self, repo: dict, cid: str, path: str, is_dir: bool) -> dict:
        def snapshot(commit: dict):
            files = commit["files"]
            if not is_dir:
                entry = files.get(path)
                return entry["sha256"] if entry else None
            prefix = path + "/"
            return sorted((p, e["sha256"]) for p, e in files.items() if p.startswith(prefix))

        history = self._history(repo, cid)
        current = snapshot(history[0])
        last = history[0]
        for commit in history[1:]:
            if snapshot(commit) != current:
                break
            last = commit
        return last

    @staticmethod
    def _dirs_of(paths: Iterable[str]) -> set[str]:
        dirs = set()
        for p in paths:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def _tree(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        recursive = req.qbool("recursive")
        expand = req.qbool("expand")
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id)
            cid = self._resolve(repo, revision)
            tree = repo["commits"][cid]["files"]
            dirs = self._dirs_of(tree)
            if path and path not in dirs:
                if path in tree:
                    raise HubError(400, f"'{path}' is a file, not a directory", headers={"X-Repo-Commit": cid})
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": cid})
            prefix = f"{path}/" if path else ""
            names: list[tuple[str, dict | None]] = []
            for d in sorted(dirs):
                if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                    names.append((d, None))
            for p in sorted(tree):
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                    names.append((p, tree[p]))
            names.sort(key=lambda item: (item[1] is not None, item[0]) if not recursive else item[0])
            cursor = int(req.q("cursor", "0") or 0)
            page_size = self.tree_page_size if not expand else min(self.tree_page_size, 50)
            page = names[cursor : cursor + page_size]
            items = [self._entry_json(repo, cid, p, e, expand) for p, e in page]
        headers = [("Content-Type", "application/json")]
        if cursor + page_size < len(names):
            qs = f"recursive={'true' if recursive else 'false'}&expand={'true' if expand else 'false'}&cursor={cursor + page_size}"
            headers.append(("Link", f'<{self._base()}{req.path}?{qs}>; rel="next"'))
        return _Response(200, headers, json.dumps(items).encode())

    def _paths_info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        raw = req.body()
        ctype = (req.headers.get("Content-Type") or "").lower()
        if "json" in ctype:
            payload = json.loads(raw or b"{}")
            paths = payload.get("paths") or []
            expand = bool(payload.get("expand"))
        else:
            form = parse_qs(raw.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand", ["false"])[0] or "").lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id)
            cid = self._resolve(repo, revision)
            tree = repo["commits"][cid]["files"]
            dirs = self._dirs_of(tree)
            out = []
            for p in paths:
                p = str(p).strip("/")
                if p in tree:
                    out.append(self._entry_json(repo, cid, p, tree[p], expand))
                elif p in dirs:
                    out.append(self._entry_json(repo, cid, p, None, expand))
        return _json_response(out)

    def _list_refs(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id)
            out: dict = {"branches": [], "converts": [], "tags": []}
            prs = []
            for ref, cid in sorted(repo["refs"].items()):
                item = {"name": ref.split("/", 2)[-1], "ref": ref, "targetCommit": cid}
                if ref.startswith("refs/heads/"):
                    out["branches"].append(item)
                elif ref.startswith("refs/tags/"):
                    out["tags"].append(item)
                elif ref.startswith("refs/pr/"):
                    prs.append({**item, "name": ref})
            if req.qbool("include_prs"):
                out["pullRequests"] = prs
        return _json_response(out)

    def _list_commits(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id)
            history = self._history(repo, self._resolve(repo, revision))
            items = [
                {
                    "id": c["id"],
                    "title": c["title"],
                    "message": c["message"],
                    "authors": [{"user": c["author"], "avatar": ""}],
                    "date": c["date"],
                }
                for c in history
            ]
        return _json_response(items)

    # ------------------------------------------------------------------ downloads

    def _resolve_file(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id)
            cid = self._resolve(repo, revision)
            entry = repo["commits"][cid]["files"].get(path)
            if entry is None:
                raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": cid})
            entry = dict(entry)
        headers = [("X-Repo-Commit", cid), ("Accept-Ranges", "bytes"), ("Vary", "Origin, Accept-Encoding")]
        if entry["lfs"]:
            headers += [
                ("ETag", f'"{entry["sha256"]}"'),
                ("X-Linked-Etag", f'"{entry["sha256"]}"'),
                ("X-Linked-Size", str(entry["size"])),
            ]
            if self.lfs_redirect:
                location = self._signed_cdn_url(entry["sha256"], path)
                return _Response(302, headers + [("Location", location), ("Content-Type", "text/plain; charset=utf-8")])
        else:
            headers.append(("ETag", f'"{entry["oid"]}"'))
        return self._serve_object(req, entry["sha256"], entry["size"], headers, path)

    def _serve_object(self, req: _Request, sha256: str, size: int, headers: list, filename: str) -> _Response:
        name = filename.rsplit("/", 1)[-1]
        headers = headers + [
            ("Content-Type", "application/octet-stream"),
            ("Content-Disposition", f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"),
        ]
        range_header = req.headers.get("Range")
        if range_header:
            match = _RANGE_RE.match(range_header)
            start = end = None
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else size - 1
                else:
                    start = max(0, size - int(match.group(2)))
                    end = size - 1
                end = min(end, size - 1)
            if start is None or start > end or start >= size:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            return _Response(206, headers, file=(self._object_path(sha256), start, end - start + 1))
        return _Response(200, headers, file=(self._object_path(sha256), 0, size))

    def _route_cdn(self, req: _Request) -> _Response:
        seg = req.segments
        if len(seg) == 2 and seg[0] == "lfs" and req.method in ("GET", "HEAD") and _HEX64.match(seg[1]):
            self._check_sig(req, "get", seg[1])
            if not self._has_object(seg[1]):
                raise HubError(404, "Object not found")
            size = os.path.getsize(self._object_path(seg[1]))
            headers = [("ETag", f'"{seg[1]}"'), ("Accept-Ranges", "bytes")]
            return self._serve_object(req, seg[1], size, headers, req.q("name") or seg[1])
        raise HubError(404, f"Not found: {req.path}")

    # ------------------------------------------------------------------ uploads

    def _upload_permission(self, req: _Request, repo_type: str, repo_id: str, create_pr: bool) -> dict:
        """Writing needs write access, except opening a PR which only needs an authenticated reader."""
        if create_pr:
            repo = self._repo_for(req, repo_type, repo_id)
            if req.user is None:
                raise HubError(401, "You must be authenticated to open a pull request")
            return repo
        return self._repo_for(req, repo_type, repo_id, write=True)

    def _preupload(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        payload = req.json()
        create_pr = req.qbool("create_pr")
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "Invalid preupload payload: 'files' must be a list")
        with self._lock:
            repo = self._upload_permission(req, repo_type, repo_id, create_pr)
            cid = self._resolve(repo, revision)
            tree = repo["commits"][cid]["files"]
            gitattributes = tree.get(".gitattributes")
            patterns = _gitattributes_lfs_patterns(self._read_object(gitattributes["sha256"]) if gitattributes else None)
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in tree:
                gitignore = self._read_object(tree[".gitignore"]["sha256"])
            ignore_patterns = _gitignore_patterns(gitignore)
            out = []
            for f in files:
                path = _validate_path(f.get("path"))
                size = int(f.get("size") or 0)
                try:
                    sample = base64.b64decode(f.get("sample") or "")
                except ValueError:
                    sample = b""
                mode = "regular"
                if self.upload_mode == "lfs" and size > 0:
                    if size >= LFS_SIZE_THRESHOLD or _matches_any(path, patterns) or b"\0" in sample:
                        mode = "lfs"
                item = {"path": path, "uploadMode": mode, "shouldIgnore": _matches_any(path, ignore_patterns)}
                existing = tree.get(path)
                if existing is not None:
                    item["oid"] = existing["sha256"] if mode == "lfs" else self._content_sha1(existing["sha256"])
                out.append(item)
        return _json_response({"files": out, "commitOid": cid})

    def _parse_commit_payload(self, req: _Request) -> tuple[dict, list[tuple[str, dict]]]:
        raw = req.body()
        ctype = (req.headers.get("Content-Type") or "").lower()
        header: dict = {}
        ops: list[tuple[str, dict]] = []
        try:
            if "ndjson" in ctype or (raw.lstrip().startswith(b'{"key"')):
                for line in raw.splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    key, value = item.get("key"), item.get("value") or {}
                    if key == "header":
                        header = value
                    else:
                        ops.append((key, value))
            else:  # legacy JSON payload (old clients)
                data = json.loads(raw or b"{}")
                header = {k: data.get(k) for k in ("summary", "description", "parentCommit") if data.get(k) is not None}
                ops += [("file", v) for v in data.get("files") or []]
                ops += [("lfsFile", v) for v in data.get("lfsFiles") or []]
                ops += [("deletedFile", v) for v in data.get("deletedFiles") or []]
                ops += [("deletedFolder", v) for v in data.get("deletedFolders") or []]
        except ValueError as e:
            raise HubError(400, f"Invalid commit payload: {e}")
        if not header.get("summary"):
            raise HubError(400, "Commit summary (header) is required")
        return header, ops

    def _commit(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        create_pr = req.qbool("create_pr")
        # Check access before reading a potentially big body (errors are answered after draining it).
        with self._lock:
            self._upload_permission(req, repo_type, repo_id, create_pr)
        header, ops = self._parse_commit_payload(req)  # full body received & parsed before any change

        # Decode regular contents outside the lock (CPU), validate everything, then apply atomically.
        prepared: list[tuple[str, str, Any]] = []
        for key, value in ops:
            if key == "file":
                path = _validate_path(value.get("path"))
                content = value.get("content", "")
                if value.get("encoding", "base64") == "base64":
                    try:
                        data = base64.b64decode(content, validate=True)
                    except ValueError:
                        raise HubError(400, f"Invalid base64 content for '{path}'")
                else:
                    data = str(content).encode()
                prepared.append(("file", path, data))
            elif key == "lfsFile":
                path = _validate_path(value.get("path"))
                oid = value.get("oid") or ""
                if (value.get("algo") or "sha256") != "sha256" or not _HEX64.match(oid):
                    raise HubError(400, f"Invalid LFS oid for '{path}'")
                prepared.append(("lfsFile", path, (oid, value.get("size"))))
            elif key in ("deletedFile", "deletedFolder"):
                prepared.append((key, _validate_path(str(value.get("path", "")).rstrip("/")), None))
            else:
                raise HubError(400, f"Unknown commit operation key: {key!r}")

        with self._lock:
            repo = self._upload_permission(req, repo_type, repo_id, create_pr)
            if create_pr:
                base_cid = self._resolve(repo, revision)
                base_ref = self._branch_ref(repo, revision) if not _HEX40.match(revision) else None
            else:
                ref = self._branch_ref(repo, revision)
                base_cid = repo["refs"][ref]
                if ref.startswith("refs/pr/"):
                    disc = self._discussion(repo, int(ref.rsplit("/", 1)[1]))
                    if disc["status"] not in ("open", "draft"):
                        raise HubError(403, f"Pull request #{disc['num']} is {disc['status']}")
            parent = header.get("parentCommit")
            if parent and parent != base_cid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo["commits"][base_cid]["files"])
            touched: set[str] = set()
            for kind, path, arg in prepared:
                if kind == "file":
                    tree[path] = self._make_entry(data=arg)
                    touched.add(path)
                elif kind == "lfsFile":
                    oid, size = arg
                    if not self._has_object(oid):
                        raise HubError(400, f"LFS object {oid} for '{path}' has not been uploaded")
                    entry = self._make_entry(sha256=oid, lfs=True)
                    if size is not None and int(size) != entry["size"]:
                        raise HubError(400, f"Size mismatch for LFS file '{path}'")
                    tree[path] = entry
                    touched.add(path)
                elif kind == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"Cannot delete {path}: A file with this name doesn't exist", "EntryNotFound")
                    del tree[path]
                    touched.discard(path)
                else:  # deletedFolder
                    victims = [p for p in tree if p.startswith(path + "/")]
                    if not victims:
                        raise HubError(404, f"Cannot delete {path}: A folder with this name doesn't exist", "EntryNotFound")
                    for p in victims:
                        del tree[p]
                        touched.discard(p)
            if ".gitattributes" in touched:
                touched = set(tree)  # LFS patterns changed: re-evaluate every regular file
            self._finalize_lfs_flags(tree, touched)
            title = str(header.get("summary"))
            message = str(header.get("description") or "")
            result: dict = {"success": True, "hookOutput": ""}
            if create_pr:
                num = len(repo["discussions"]) + 1
                pr_ref = f"refs/pr/{num}"
                cid = self._new_commit(repo, pr_ref, tree, title, message, req.user or "", parents=[base_cid])
                repo["discussions"].append(
                    self._new_discussion(num, title, message, req.user or "", True, "open", base_ref or "refs/heads/main")
                )
                repo["discussions"][-1]["events"].append(self._event("commit", req.user, {"subject": title, "oid": cid}))
                result["pullRequestUrl"] = f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"
            else:
                cid = self._new_commit(repo, ref, tree, title, message, req.user or "")
                if ref.startswith("refs/pr/"):
                    disc = self._discussion(repo, int(ref.rsplit("/", 1)[1]))
                    disc["events"].append(self._event("commit", req.user, {"subject": title, "oid": cid}))
            self._save_repo(repo)
        result["commitOid"] = cid
        result["commitUrl"] = f"{self._repo_url(repo_type, repo_id)}/commit/{cid}"
        return _json_response(result)

    # ------------------------------------------------------------------ LFS

    def _lfs_batch(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        payload = req.json()
        operation = payload.get("operation")
        if operation not in ("upload", "download"):
            raise HubError(400, "operation must be 'upload' or 'download'")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(409, "Unsupported hash algorithm")
        with self._lock:
            if operation == "upload":
                ref = (payload.get("ref") or {}).get("name")
                # No ref = the client is preparing a PR: reading rights are enough (like create_pr).
                self._upload_permission(req, repo_type, repo_id, create_pr=ref is None)
            else:
                self._repo_for(req, repo_type, repo_id)
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _HEX64.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid object"}})
                continue
            item: dict = {"oid": oid, "size": size, "authenticated": True}
            exists = self._has_object(oid)
            if operation == "upload":
                if not exists:
                    expires = datetime.fromtimestamp(time.time() + SIGNED_URL_TTL, timezone.utc).isoformat()
                    item["actions"] = {
                        "upload": {"href": self._signed_upload_url(oid, size), "expires_at": expires},
                        "verify": {"href": f"{self._repo_url(repo_type, repo_id)}.git/info/lfs/objects/verify"},
                    }
            elif exists:
                item["actions"] = {"download": {"href": self._signed_cdn_url(oid, oid)}}
            else:
                item = {"oid": oid, "size": size, "error": {"code": 404, "message": "Object does not exist"}}
            objects.append(item)
        return _json_response(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, req: _Request, oid: str) -> _Response:
        size_q = req.q("size") or ""
        if not _HEX64.match(oid) or not size_q.isdigit():
            raise HubError(400, "Invalid upload URL")
        self._check_sig(req, "put", oid, size_q)
        target = self._object_path(oid)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in req.iter_body():
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            if digest.hexdigest() != oid or size != int(size_q):
                raise HubError(400, f"Uploaded content does not match oid/size (got {size} bytes)")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _Response(200, [("Content-Type", "text/plain"), ("ETag", f'"{oid}"')], b"")

    def _lfs_verify(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        payload = req.json()
        with self._lock:
            self._repo_for(req, repo_type, repo_id)
        oid, size = payload.get("oid", ""), payload.get("size")
        if not self._has_object(oid) or (size is not None and os.path.getsize(self._object_path(oid)) != size):
            raise HubError(404, f"LFS object {oid} not found")
        return _json_response({"message": "ok"})

    # ------------------------------------------------------------------ branches / tags

    def _branch(self, req: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        if not branch or branch.startswith("refs/") or ".." in branch or branch.endswith("/") or " " in branch:
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        payload = req.json() if req.method == "POST" else {}
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id, write=True)
            ref = f"refs/heads/{branch}"
            if req.method == "DELETE":
                if ref not in repo["refs"]:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise HubError(403, "Cannot delete the default branch")
                del repo["refs"][ref]
            else:
                if ref in repo["refs"]:
                    raise HubError(409, f"Reference already exists: {ref}")
                start = payload.get("startingPoint") or "main"
                repo["refs"][ref] = self._resolve(repo, start)
            self._save_repo(repo)
        return _json_response({})

    def _tag(self, req: _Request, repo_type: str, repo_id: str, target: str) -> _Response:
        with self._lock:
            repo = self._repo_for(req, repo_type, repo_id, write=True)
            if req.method == "DELETE":
                ref = f"refs/tags/{target}"
                if ref not in repo["refs"]:
                    raise HubError(404, f"Invalid rev id: {target}", "RevisionNotFound")
                del repo["refs"][ref]
            else:
                tag = (req.json() or {}).get("tag")
                if not tag or tag.startswith("refs/") or " " in tag:
                    raise HubError(400, f"Invalid tag name: {tag!r}")
                ref = f"refs/tags/{tag}"
                if ref in repo["refs"]:
                    raise HubError(409, f"Tag already exists: {tag}")
                repo["refs"][ref] = self._resolve(repo, target)
            self._save_repo(repo)
        return _json_response({})

    # ------------------------------------------------------------------ discussions / pull requests

    def _event(self, kind: str, author: str | None, data: dict) -> dict:
        return {
            "id": secrets.token_hex(12),
            "type": kind,
            "createdAt": _now_iso(),
            "author": {"name": author or "deleted", "type": "user"},
            "data": data,
        }

    def _new_discussion(self, num, title, description, author, is_pr, status, base) -> dict:
        return {
            "num": num,
            "title": title,
            "description": description,
            "author": author,
            "isPullRequest": is_pr,
            "status": status,
            "base": base,
            "createdAt": _now_iso(),
            "events": [self._event("comment", author, {"edited": False, "hidden": False, "latest": {"raw": description}})],
        }

    @staticmethod
    def _discussion(repo: dict, num: int) -> dict:
        for disc in repo["discussions"]:
            if disc["num"] == num:
                return disc
        raise HubError(404, f"Discussion #{num} not found")

    def _discussion_json(self, repo: dict, disc: dict, details: bool) -> dict:
        data = {
            "num": disc["num"],
            "title": disc["title"],
            "status": disc["status"],
            "isPullRequest": disc["isPullRequest"],
            "createdAt": disc["createdAt"],
            "author": {"name": disc["author"], "type": "user"},
            "repo": {"name": repo["id"], "type": repo["type"]},
            "numComments": sum(1 for e in disc["events"] if e["type"] == "comment"),
            "pinned": False,
        }
        if details:
            data["events"] = disc["events"]
            data["filesWithConflicts"] = []
            data["changes"] = {"base": disc["base"]}
            if disc.get("mergeCommitId"):
                data["changes"]["mergeCommitId"] = disc["mergeCommitId"]
            data["diff"] = ""
        return data

    def _discussions(self, req: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        m = req.method
        if not rest:
            if m == "GET":
                with self._lock:
                    repo = self._repo_for(req, repo_type, repo_id)
                    items = [self._discussion_json(repo, d, False) for d in reversed(repo["discussions"])]
                return _json_response({"discussions": items, "count": len(items), "start": 0, "numClosedDiscussions": 0})
            if m == "POST":
                payload = req.json()
                with self._lock:
                    repo = self._repo_for(req, repo_type, repo_id)
                    if req.user is None:
                        raise HubError(401, "You must be authenticated to open a discussion")
                    num = len(repo["discussions"]) + 1
                    is_pr = bool(payload.get("pullRequest"))
                    title = str(payload.get("title") or "").strip()
                    if len(title) < 3:
                        raise HubError(400, "Title must be at least 3 characters long")
                    disc = self._new_discussion(
                        num, title, payload.get("description") or "", req.user, is_pr, "draft" if is_pr else "open",
                        "refs/heads/main",
                    )
                    repo["discussions"].append(disc)
                    if is_pr:
                        repo["refs"][f"refs/pr/{num}"] = repo["refs"]["refs/heads/main"]
                    self._save_repo(repo)
                return _json_response({"num": num, "pullRequest": is_pr, "url": f"{self._repo_url(repo_type, repo_id)}/discussions/{num}"})
        if rest and rest[0].isdigit():
            num = int(rest[0])
            with self._lock:
                repo = self._repo_for(req, repo_type, repo_id)
                disc = self._discussion(repo, num)
                if len(rest) == 1 and m == "GET":
                    return _json_response(self._discussion_json(repo, disc, True))
                if len(rest) == 2 and m == "POST":
                    payload = req.json() or {}
                    action = rest[1]
                    if req.user is None:
                        raise HubError(401, "You must be authenticated")
                    if action == "comment":
                        event = self._event("comment", req.user, {"edited": False, "hidden": False,
                                                                  "latest": {"raw": payload.get("comment", "")}})
                        disc["events"].append(event)
                        self._save_repo(repo)
                        return _json_response({"newMessage": event})
                    if action == "status":
                        self._repo_for(req, repo_type, repo_id, write=True)
                        disc["status"] = payload.get("status", disc["status"])
                        event = self._event("status-change", req.user, {"status": disc["status"]})
                        disc["events"].append(event)
                        self._save_repo(repo)
                        return _json_response({"newStatus": event})
                    if action == "merge":
                        self._repo_for(req, repo_type, repo_id, write=True)
                        return self._merge_pr(req, repo, disc)
        raise HubError(404, f"Not found: {req.path}")

    def _merge_pr(self, req: _Request, repo: dict, disc: dict) -> _Response:
        if not disc["isPullRequest"] or disc["status"] not in ("open", "draft"):
            raise HubError(400, "Only open pull requests can be merged")
        pr_ref = f"refs/pr/{disc['num']}"
        pr_head = repo["commits"][repo["refs"][pr_ref]]
        # Apply the PR's changes (relative to the commit it branched from) on top of the base branch.
        history = self._history(repo, pr_head["id"])
        pr_commit_ids = {e["data"]["oid"] for e in disc["events"] if e["type"] == "commit"}
        fork = next((c for c in history if c["id"] not in pr_commit_ids), history[-1])
        base_ref = disc["base"]
        tree = dict(repo["commits"][repo["refs"][base_ref]]["files"])
        for path in set(fork["files"]) | set(pr_head["files"]):
            before, after = fork["files"].get(path), pr_head["files"].get(path)
            if before != after:
                if after is None:
                    tree.pop(path, None)
                else:
                    tree[path] = dict(after)
        cid = self._new_commit(repo, base_ref, tree, f"Merge pull request #{disc['num']}", disc["title"], req.user or "")
        disc["status"] = "merged"
        disc["mergeCommitId"] = cid
        disc["events"].append(self._event("status-change", req.user, {"status": "merged"}))
        self._save_repo(repo)
        return _json_response({"mergeCommitId": cid})


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a local Hugging Face Hub-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0, help="port of the LFS 'CDN' listener (0 = free port)")
    parser.add_argument("--root", default=None, help="storage folder (kept); temporary if omitted")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN=USER[:read]",
                        help="valid token (repeatable). Default: hf_test_token=tester")
    parser.add_argument("--org", action="append", default=[], metavar="ORG=USER1,USER2")
    parser.add_argument("--upload-mode", choices=["regular", "lfs"], default="regular")
    parser.add_argument("--no-lfs-redirect", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    tokens: dict[str, Any] = {}
    for item in args.token:
        token, _, user = item.partition("=")
        user, _, role = user.partition(":")
        tokens[token] = (user, role or "write")
    orgs = {org: [u for u in users.split(",") if u] for org, _, users in (o.partition("=") for o in args.org)}
    if args.root:
        os.makedirs(args.root, exist_ok=True)
    hub = LocalHub(
        tokens or None,
        root=args.root,
        orgs=orgs,
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        upload_mode=args.upload_mode,
        lfs_redirect=not args.no_lfs_redirect,
        verbose=not args.quiet,
    )
    url = hub.start()
    users = sorted({user for user, _ in hub._tokens.values()})
    print(f"LocalHub listening on {url} (CDN {hub.cdn_url}), root={hub.root}, users={users}", flush=True)
    print(f"  export HF_ENDPOINT={url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
