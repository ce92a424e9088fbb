"""``seqcls serve``: the HTTP server (FastAPI + uvicorn) over one Scorer.

Routes (shapes in docs HTTP_API.md): ``POST /score`` and ``/v1/score`` (vLLM), ``POST /rerank``,
``/v1/rerank`` and ``/v2/rerank`` (Cohere, Jina, vLLM; ``/rerank`` also answers TEI-style requests,
selected by a ``texts`` field), ``GET /health``, ``/v1/models``, ``/metrics`` (Prometheus text) and the
schema at ``/openapi.json``.

Requests are tokenised on a small thread pool, then queued to one worker thread that owns the model
and scores whatever is queued together (``batcher.Batcher``). Checks that need no body (API key,
body size, concurrency) run in one ASGI middleware before the body is read.

Example:
    >>> from seqcls.runtime.server import create_app, serve
    >>> serve("qwen3-reranker-seqcls", port=8000)                      # blocks; Ctrl-C stops it gracefully
    >>> app = create_app(Scorer("qwen3-reranker-seqcls"), api_key="k")  # an ASGI app for your own server
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SeqclsError, UsageError
from ..multimodal import plain_text
from .batcher import Batcher, batch_logits
from .limits import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_DOCUMENTS

log = logging.getLogger("seqcls.serve")
SCORING_PATHS = frozenset({"/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank"})
OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
ERROR_TYPES = {
    400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 405: "MethodNotAllowedError",
    413: "RequestTooLargeError", 422: "UnprocessableEntityError", 429: "TooManyRequestsError",
    500: "InternalServerError", 503: "ServiceUnavailableError",
}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# ---------------------------------------------------------------- request schemas


class ImageURL(BaseModel):
    """vLLM/OpenAI ``image_url`` object."""

    url: str = Field(description="A base64 data URL (data:image/png;base64,...). Remote URLs are refused (never fetched); "
                                 "local file paths only inside the folder the operator allowed (--allowed-local-media-path).")


class ContentPart(BaseModel):
    """A part of a vLLM-style content list: ``{"type": "text", "text": ...}`` or
    ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``. Image parts need a
    vision-language model (others answer 400 "image documents are not supported by this model");
    any other type is answered 400."""

    type: str = Field(description='"text" or "image_url".', json_schema_extra={"examples": ["text", "image_url"]})
    text: Optional[str] = Field(None, description='The text (type "text").')
    image_url: Optional[Union[ImageURL, str]] = Field(None, description='The image (type "image_url"): {"url": ...} or the URL itself.')


def _one_of_keys(*groups: tuple[str, ...], among: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """JSON-schema ``oneOf`` branches: the keys of exactly one group present (and, where ``among`` is
    given, none of its other keys)."""
    branches = []
    for group in groups:
        branch: dict[str, Any] = {"required": list(group)}
        others = [k for k in among if k not in group]
        if others:
            branch["not"] = {"anyOf": [{"required": [k]} for k in others]}
        branches.append(branch)
    return branches


def _json_int(value: Any) -> Any:
    """JSON integers (1 and 1.0), not strings or booleans."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


# (the bounds come before the validator, so that they reach the JSON schema as minimum)
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_json_int)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_json_int)]


class TextObject(BaseModel):
    """A document (or query) as an object: Cohere/Jina `{"text": ...}` or vLLM's `{"content": [parts]}` (exactly one of them).
    Other fields are ignored."""

    model_config = ConfigDict(json_schema_extra={"oneOf": _one_of_keys(("text",), ("content",))})
    text: str = Field(None, description="The text of the document.")
    content: list[ContentPart] = Field(None, min_length=1, description="vLLM content form: text parts (joined with newlines) and, for vision-language models, image_url parts.")

    @model_validator(mode="after")
    def _text_or_content(self) -> "TextObject":
        if (self.text is None) == (self.content is None):
            raise ValueError('give exactly one of "text" or "content"')
        return self


TextItem = Union[str, TextObject]
NonEmpty = {"minItems": 1}  # documented; an empty list is answered 400 (bad value), as HTTP_API.md asks
Side = Union[str, TextObject, Annotated[list[TextItem], Field(json_schema_extra=NonEmpty)]]


def _no_zero(value: Optional[int]) -> Optional[int]:
    if value == 0:
        raise ValueError("must be a positive number of tokens, or -1 for the model's limit")
    return value


TruncateTokens = Optional[Annotated[int, Field(ge=-1, json_schema_extra={"not": {"const": 0}}), BeforeValidator(_json_int), AfterValidator(_no_zero)]]

_SIDE_HELP = "A string, or a non-empty list of them (items may also be objects with `text` or vLLM `content`)."
_TRUNCATE_HELP = (
    "Cut each prompt to at most this many tokens by shortening the document (-1: the model's limit). "
    "Without it (or max_tokens_per_doc), an over-long pair is refused with 400 and its token counts."
)
_MODEL_HELP = "The served model's name. Optional; with --served-model-name set, any other name gets 404."
_INSTRUCTION_HELP = "Replaces the recipe's default task instruction (\"\" for none)."
_SCORE_SIDES = ("queries", "documents", "items", "text_1", "text_2", "data_1", "data_2")
_SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("text_1", "text_2"), ("data_1", "data_2"))


class ScoreRequest(BaseModel):
    """vLLM's /score: pairs of texts, 1:1, 1:N or N:N, under one of vLLM's pairs of field names."""

    model_config = ConfigDict(json_schema_extra={"oneOf": _one_of_keys(*_SCORE_PAIRS, among=_SCORE_SIDES)})
    model: Optional[str] = Field(None, description=_MODEL_HELP)
    queries: Side = Field(None, description="The query side (with `documents` or `items`). " + _SIDE_HELP)
    documents: Side = Field(None, description="The document side (with `queries`). " + _SIDE_HELP)
    items: Side = Field(None, description="The document side (with `queries`), vLLM's newer name. " + _SIDE_HELP)
    text_1: Side = Field(None, description="The query side, vLLM's classic name (with `text_2`). " + _SIDE_HELP)
    text_2: Side = Field(None, description="The document side (with `text_1`). " + _SIDE_HELP)
    data_1: Side = Field(None, description="The query side, vLLM's multimodal name (with `data_2`). " + _SIDE_HELP)
    data_2: Side = Field(None, description="The document side (with `data_1`). " + _SIDE_HELP)
    truncate_prompt_tokens: TruncateTokens = Field(None, description=_TRUNCATE_HELP)
    use_activation: Optional[StrictBool] = Field(None, description="true (default): the probability (sigmoid of the logit); false: the raw logit.")
    instruction: Optional[str] = Field(None, description=_INSTRUCTION_HELP)

    @model_validator(mode="after")
    def _one_pair(self) -> "ScoreRequest":
        given = {name for name in _SCORE_SIDES if getattr(self, name) is not None}
        if given not in [set(p) for p in _SCORE_PAIRS]:
            shown = ", ".join(sorted(given)) or "none"
            raise ValueError(
                f"pass one pair of inputs: queries + documents (or text_1 + text_2, data_1 + data_2, queries + items); got {shown}"
            )
        return self

    def sides(self) -> tuple[tuple[str, Any], tuple[str, Any]]:
        for q, d in _SCORE_PAIRS:
            if getattr(self, q) is not None and getattr(self, d) is not None:
                return (q, getattr(self, q)), (d, getattr(self, d))
        raise AssertionError("validated by _one_pair")


class RerankRequest(BaseModel):
    """Cohere (v1, v2), Jina and vLLM rerank."""

    model: Optional[str] = Field(None, description=_MODEL_HELP)
    query: TextItem = Field(description="The query (a string, or an object with `text` or `content`).")
    documents: Annotated[list[TextItem], Field(json_schema_extra=NonEmpty)] = Field(
        description="The candidate documents (non-empty): strings, or objects with `text` (Cohere, Jina) or `content` (vLLM).")
    top_n: Optional[NonNegativeInt] = Field(None, description="Return only the best top_n results (0 or absent: all).")
    return_documents: StrictBool = Field(True, description="Include each result's document as `document: {text}` (omitted when false).")
    truncate_prompt_tokens: TruncateTokens = Field(None, description=_TRUNCATE_HELP)
    max_tokens_per_doc: Optional[PositiveInt] = Field(None, description="Cut each document to at most this many tokens (Cohere v2); also allows truncation to the model's limit.")
    instruction: Optional[str] = Field(None, description=_INSTRUCTION_HELP)
    use_activation: Optional[StrictBool] = Field(None, description="true (default): relevance_score is a probability; false: the raw logit.")


class AnyRerankRequest(RerankRequest):
    """/rerank: Cohere/Jina/vLLM with `documents`, or TEI with `texts` (then the response is a bare list)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": _one_of_keys(("documents",), ("texts",))})
    documents: Annotated[list[TextItem], Field(json_schema_extra=NonEmpty)] = Field(
        None, description="The candidate documents (Cohere, Jina, vLLM; non-empty): strings or objects with `text`/`content`. Give this or `texts`.")
    texts: Annotated[list[str], Field(json_schema_extra=NonEmpty)] = Field(
        None, description="TEI: the candidate texts (non-empty). Selects TEI's request and response shape.")
    raw_scores: StrictBool = Field(False, description="TEI: return raw logits instead of probabilities.")
    return_text: StrictBool = Field(False, description="TEI: include each result's `text`.")
    truncate: Optional[StrictBool] = Field(None, description="TEI: allow cutting over-long documents to the model's limit.")
    truncation_direction: Optional[str] = Field(None, description="TEI: accepted for compatibility; documents are cut on the side the model's recipe names.")

    @model_validator(mode="after")
    def _one_list(self) -> "AnyRerankRequest":
        if (self.documents is None) == (self.texts is None):
            raise ValueError("pass either documents (Cohere, Jina, vLLM) or texts (TEI), exactly one of them")
        return self


# ---------------------------------------------------------------- response schemas


class ScoreData(BaseModel):
    index: int = Field(description="The pair's position in the input.")
    object: Literal["score"] = Field("score", description='Always "score".')
    score: float = Field(description="Probability of relevance (sigmoid of the logit), or the raw logit with use_activation=false.")


class ScoreUsage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens scored (every token of every pair).")
    total_tokens: int = Field(description="Equal to prompt_tokens.")
    completion_tokens: int = Field(0, description="Always 0.")


class ScoreResponse(BaseModel):
    id: str = Field(description="A unique id of this response.")
    object: Literal["list"] = Field("list", description='Always "list".')
    created: int = Field(description="Unix time of the response.")
    model: str = Field(description="The served model's name.")
    data: list[ScoreData] = Field(description="One score per pair, in input order.")
    usage: ScoreUsage = Field(description="Token counts.")


class RerankDocument(BaseModel):
    text: str = Field(description="The document's text.")


class RerankResultItem(BaseModel):
    index: int = Field(description="The document's position in the request.")
    relevance_score: float = Field(description="Probability of relevance (sigmoid of the logit), or the raw logit with use_activation=false.")
    document: Optional[RerankDocument] = Field(None, description="The document, when return_documents is true (omitted otherwise).")


class RerankUsage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens scored.")
    total_tokens: int = Field(description="Equal to prompt_tokens.")


class ApiVersion(BaseModel):
    version: str = Field(description="The Cohere API version this route follows.")


class BilledUnits(BaseModel):
    search_units: int = Field(description="Always 1 (Cohere's billing unit for a rerank call).")


class RerankMeta(BaseModel):
    api_version: ApiVersion = Field(description="API version.")
    billed_units: BilledUnits = Field(description="Cohere-style billing units.")


class RerankResponse(BaseModel):
    id: str = Field(description="A unique id of this response.")
    model: str = Field(description="The served model's name.")
    usage: RerankUsage = Field(description="Token counts.")
    results: list[RerankResultItem] = Field(description="Results sorted by relevance_score, best first, cut to top_n.")
    meta: RerankMeta = Field(description="Cohere-style metadata.")


class TEIRank(BaseModel):
    index: int = Field(description="The text's position in `texts`.")
    score: float = Field(description="Probability of relevance, or the raw logit with raw_scores=true.")
    text: Optional[str] = Field(None, description="The text, when return_text is true.")


class ErrorBody(BaseModel):
    message: str = Field(description="What was wrong, and how to fix it.")
    type: str = Field(description="Error class, e.g. BadRequestError.")
    param: Optional[str] = Field(None, description="The request field at fault, when there is one.")
    code: int = Field(description="The HTTP status code.")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="The error.")


class ModelCard(BaseModel):
    id: str = Field(description="The served model's name (use it as `model`).")
    object: Literal["model"] = Field("model", description='Always "model".')
    created: int = Field(description="Unix time the server started.")
    owned_by: str = Field("seqcls", description='Always "seqcls".')
    root: str = Field(description="The model folder.")
    max_model_len: int = Field(description="Longest prompt in tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description='Always "list".')
    data: list[ModelCard] = Field(description="The one served model.")


class Health(BaseModel):
    status: str = Field(description='"ok" when ready to score.')
    model: str = Field(description="The served model's name.")


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Bad value (lengths, empty input, too many documents, over-long input)", 401: "Missing or wrong API key",
            404: "Unknown model name", 413: "Body over the size limit", 422: "Request does not match the schema",
            429: "Too many requests in flight", 503: "Model still loading"}
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


SCORING_ERRORS = _error_responses(400, 401, 404, 413, 422, 429, 503)


# ---------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` with HTTP status ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


_TYPE_TAGS = {"str", "int", "bool", "float", "list", "dict", "TextObject", "ContentPart", "ImageURL"}


def _param(loc: Any) -> str | None:
    """A request field path from a pydantic error location, without union member tags."""
    parts = []
    for part in loc:
        if part == "body" or (isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)):
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else ("." + str(part) if parts else str(part)))
    return "".join(parts) or None


def _validation_message(errors: list[dict[str, Any]]) -> tuple[int, str, str | None]:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return 400, f"The request body is not valid JSON ({detail}); send a JSON object.", None
    param = _param(first.get("loc", ()))
    if param is None and first.get("type") == "missing":
        return 422, "The request body is empty; send a JSON object.", None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return 422, "The request body must be a JSON object (Content-Type: application/json).", None
    same = [e for e in errors if _param(e.get("loc", ())) == param]
    msgs = []
    for e in same:
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if msg not in msgs:
            msgs.append(msg)
    if len(same) > 1 and param:  # one value failing every member of a union
        text = f"{param}: wrong type or value (" + "; or ".join(m[0].lower() + m[1:] for m in msgs[:3]) + ")"
    else:
        text = f"{param}: {msgs[0]}" if param else msgs[0] if msgs else "invalid request"
    others = len({_param(e.get("loc", ())) for e in errors} - {param})
    more = f" (and {others} more field{'s' if others > 1 else ''} at fault)" if others else ""
    return 422, f"{text}{more}.", param


# ---------------------------------------------------------------- metrics


class Metrics:
    """Prometheus counters and histograms, rendered as text exposition format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts + [sum, count]
        self.prompt_tokens = 0
        self.pairs = 0
        self.in_flight = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            row = self.latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += seconds
            row[-1] += 1

    def scored(self, pairs: int, tokens: int) -> None:
        with self._lock:
            self.pairs += pairs
            self.prompt_tokens += tokens

    def render(self, queue_depth: int, loaded: bool, batch_stats: Any) -> str:
        lines: list[str] = []

        def head(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("seqcls_requests_total", "counter", "HTTP requests by route and status code.")
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'seqcls_requests_total{{route="{route}",code="{status}"}} {n}')
            head("seqcls_request_duration_seconds", "histogram", "Request latency in seconds, by route.")
            for route, row in sorted(self.latency.items()):
                for bound, n in zip(LATENCY_BUCKETS, row):
                    lines.append(f'seqcls_request_duration_seconds_bucket{{route="{route}",le="{bound:g}"}} {int(n)}')
                lines.append(f'seqcls_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {int(row[-1])}')
                lines.append(f'seqcls_request_duration_seconds_sum{{route="{route}"}} {row[-2]:.6f}')
                lines.append(f'seqcls_request_duration_seconds_count{{route="{route}"}} {int(row[-1])}')
            head("seqcls_prompt_tokens_total", "counter", "Prompt tokens scored.")
            lines.append(f"seqcls_prompt_tokens_total {self.prompt_tokens}")
            head("seqcls_pairs_total", "counter", "Query-document pairs scored.")
            lines.append(f"seqcls_pairs_total {self.pairs}")
            head("seqcls_requests_in_flight", "gauge", "Scoring requests being handled.")
            lines.append(f"seqcls_requests_in_flight {self.in_flight}")
        head("seqcls_queue_depth", "gauge", "Scoring requests waiting for the engine.")
        lines.append(f"seqcls_queue_depth {queue_depth}")
        head("seqcls_batches_total", "counter", "Engine calls (each scores one or more requests together).")
        lines.append(f"seqcls_batches_total {batch_stats.batches if batch_stats else 0}")
        head("seqcls_batched_requests_total", "counter", "Requests scored by those engine calls.")
        lines.append(f"seqcls_batched_requests_total {batch_stats.requests if batch_stats else 0}")
        head("seqcls_engine_busy_seconds_total", "counter", "Seconds the engine spent scoring.")
        lines.append(f"seqcls_engine_busy_seconds_total {batch_stats.busy_seconds if batch_stats else 0.0:.6f}")
        head("seqcls_model_loaded", "gauge", "1 once the model is loaded and serving.")
        lines.append(f"seqcls_model_loaded {1 if loaded else 0}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- state


class ServerState:
    """The model, its batcher and the server's limits (``app.state.seqcls``)."""

    def __init__(self, loader: Callable[[], Any] | None, scorer: Any, *, api_key: str | None, served_model_name: str | None,
                 max_documents: int, max_body_bytes: int, max_concurrent: int, max_batch_tokens: int | None,
                 batch_window_ms: float, model_label: str, media_dir: Path | None = None):
        self.loader = loader
        self.media_dir = media_dir  # --allowed-local-media-path, resolved; None: no local files
        self.scorer = scorer
        self.load_error: str | None = None
        self.api_key = api_key
        self.served_model_name = served_model_name
        self.max_documents = int(max_documents)
        self.max_body_bytes = int(max_body_bytes)
        self.max_concurrent = int(max_concurrent)
        self.max_batch_tokens = max_batch_tokens
        self.batch_window_ms = float(batch_window_ms)
        self.model_label = model_label
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seqcls-tokenize")
        self.started = int(time.time())
        self.ready = threading.Event()
        self.arriving = 0  # scoring requests admitted and not yet queued for the engine (event-loop thread only)

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.scorer is not None:
            return str(getattr(self.scorer, "model_name", self.model_label))
        return self.model_label

    def attach(self, scorer: Any) -> None:
        self.scorer = scorer
        budget = self.max_batch_tokens or getattr(getattr(scorer, "engine", None), "batch_tokens", None) or 16384
        self.batcher = Batcher(lambda reqs: batch_logits(scorer, reqs), budget, self.batch_window_ms / 1000.0,
                               arriving=lambda: self.arriving)
        self.batcher.start()
        self.ready.set()
        log.info("Serving %s (%s labels) on %s.", self.model_name, getattr(scorer, "num_labels", "?"), getattr(scorer, "device", "?"))

    def load(self) -> None:
        try:
            assert self.loader is not None
            self.attach(self.loader())
        except SeqclsError as exc:
            self.load_error = str(exc)
            log.error("Loading the model failed: %s", exc)
        except Exception as exc:  # noqa: BLE001 - reported on /health and by serve()
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("Loading the model failed")
        finally:
            self.ready.set()

    def require_scorer(self) -> Any:
        if self.scorer is None or self.batcher is None:
            if self.load_error:
                raise ApiError(503, f"The model failed to load ({self.load_error}); fix it and restart the server.")
            raise ApiError(503, "The model is still loading; retry in a few seconds.", headers={"Retry-After": "2"})
        return self.scorer

    def check_model(self, name: str | None) -> None:
        if self.served_model_name and name is not None and name != self.served_model_name:
            raise ApiError(404, f"The model {name!r} does not exist; this server serves {self.served_model_name!r}.", "model")

    async def tokenize(self, queries: Any, documents: Any, **options: Any) -> list[list[int]]:
        scorer = self.scorer
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, lambda: scorer.tokenize(queries, documents, **options))
        except UsageError as exc:
            message = str(exc)
            if "allow truncation" in message:  # the Scorer's advice names Python/CLI options; give the HTTP ones
                message = message.split("; ")[0] + (
                    "; shorten the document, or allow truncation: truncate_prompt_tokens (-1 for the model's limit), "
                    "max_tokens_per_doc, or TEI's truncate=true."
                )
            raise ApiError(400, message) from None

    def _arrived(self, scope: dict[str, Any]) -> None:
        ticket = scope.get(_ARRIVING)
        if ticket and ticket[0]:
            ticket[0] = False
            self.arriving -= 1

    async def pair_logits(self, queries: Any, documents: Any, scope: dict[str, Any], **options: Any) -> tuple[Any, list[int]]:
        """Raw logits and prompt lengths of the pairs: text through the batcher, pairs with images
        through ``Scorer.score`` (the vision engine runs them one by one)."""
        items = (queries if isinstance(queries, list) else [queries]) + (documents if isinstance(documents, list) else [documents])
        if not any(_has_image(item) for item in items):
            ids = await self.tokenize(queries, documents, **options)
            return await self.logits(ids, scope), [len(x) for x in ids]
        scorer = self.scorer
        if not getattr(scorer, "multimodal", False):
            raise ApiError(400, "image documents are not supported by this model; send text.")
        self._arrived(scope)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.pool, lambda: scorer.score(queries, documents, raw=True, **options))
        except UsageError as exc:
            raise ApiError(400, str(exc)) from None
        return result.logits, list(result.num_tokens)

    async def logits(self, ids: list[list[int]], scope: dict[str, Any]) -> Any:
        assert self.batcher is not None
        self._arrived(scope)
        try:
            future = self.batcher.submit(ids)
        except RuntimeError:
            raise ApiError(503, "The server is shutting down; retry on another instance.") from None
        return await asyncio.wrap_future(future)


# ---------------------------------------------------------------- ASGI gate (no body needed)


class Gate:
    """Metrics, API key, body size and concurrency checks, before FastAPI reads the body."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        started = time.perf_counter()
        status_box = [500]
        path = scope.get("path", "")

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        counted = False
        ticket = [True]  # [still counted in state.arriving]
        try:
            rejection = self._check_headers(scope)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
                return
            if path in SCORING_PATHS and scope.get("method") == "POST":
                if state.metrics.in_flight >= state.max_concurrent:
                    await error_response(429, f"Too many requests in flight (limit {state.max_concurrent}, --max-concurrent); retry shortly.",
                                         headers={"Retry-After": "1"})(scope, receive, send_wrapper)
                    return
                state.metrics.in_flight += 1
                state.arriving += 1
                counted = True
            body = await self._read_body(receive)
            if body is None:  # client went away
                return
            if body is _TOO_BIG:
                await self._too_big()(scope, receive, send_wrapper)
                return
            if path in SCORING_PATHS:
                scope = _as_json(scope)
            if counted:
                scope[_ARRIVING] = ticket  # frameworks copy the scope dict; the list is shared
            await self.app(scope, _replay(body, receive), send_wrapper)
        finally:
            if counted:
                state.metrics.in_flight -= 1
                if ticket[0]:  # ended before reaching the engine (an error, or refused)
                    state.arriving -= 1
            route = scope.get("route")
            label = getattr(route, "path", None) or (path if path in SCORING_PATHS or path in OPEN_PATHS or path == "/v1/models" else "other")
            state.metrics.observe(label, status_box[0], time.perf_counter() - started)

    def _too_big(self) -> JSONResponse:
        limit = self.state.max_body_bytes
        return error_response(413, f"The request body is over the limit of {limit} bytes (--max-body-bytes); send fewer or shorter documents.",
                              headers={"Connection": "close"})

    def _check_headers(self, scope: dict[str, Any]) -> JSONResponse | None:
        state = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if state.api_key and scope.get("path") not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), state.api_key.encode()):
                why = "is missing" if not auth else "is wrong"
                return error_response(401, f"The API key {why}; send the header 'Authorization: Bearer <key>'.",
                                      headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return error_response(400, "The Content-Length header is not a number.")
            if declared > state.max_body_bytes:
                return self._too_big()
        return None

    async def _read_body(self, receive: Callable) -> bytes | object | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.state.max_body_bytes:
                return _TOO_BIG
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


_TOO_BIG = object()
_ARRIVING = "seqcls.arriving"  # scope key: [True] while this request counts in ServerState.arriving
_LENIENT_TYPES = ("", "application/x-www-form-urlencoded", "text/plain")


def _as_json(scope: dict[str, Any]) -> dict[str, Any]:
    """Read bodies sent without a JSON content type (``curl -d``, ``requests.post(data=...)``) as JSON."""
    headers = scope.get("headers", [])
    ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if ctype.split(b";")[0].strip().decode("latin-1").lower() not in _LENIENT_TYPES:
        return scope
    fixed = [(k, v) for k, v in headers if k.lower() != b"content-type"] + [(b"content-type", b"application/json")]
    return {**scope, "headers": fixed}


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = [False]

    async def replay() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ---------------------------------------------------------------- input helpers


def _check_text(text: str, param: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{param} is not valid Unicode (it holds an unpaired surrogate); send UTF-8 text.", param) from None
    return text


def _item_of(item: Any, param: str, media_dir: Path | None) -> Any:
    """A request's query or document as the Scorer takes it: text, or a content list with images."""
    if isinstance(item, str):
        return _check_text(item, param)
    if item.content is None:
        return _check_text(item.text, param)
    parts: list[Any] = []
    for k, part in enumerate(item.content):
        where = f"{param}.content[{k}]"
        if part.type == "text":
            if part.text is None:
                raise ApiError(400, f'{where} is a text part without `text`; send {{"type": "text", "text": "..."}}.', where)
            parts.append(_check_text(part.text, f"{where}.text"))
        elif part.type in _IMAGE_PARTS:
            url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
            if not url:
                raise ApiError(400, f'{where} has no image_url; send {{"type": "image_url", "image_url": {{"url": "data:image/png;base64,..."}}}}.', where)
            parts.append({"type": "image_url", "image_url": {"url": _media_url(url, where, media_dir)}})
        else:
            raise ApiError(400, f'{where} has unsupported content type {part.type!r}; send parts of type "text" or "image_url".', where)
    if not any(isinstance(p, dict) for p in parts):
        return "\n".join(parts)
    return parts


_IMAGE_PARTS = ("image_url", "input_image")


def _media_url(url: str, param: str, media_dir: Path | None) -> str:
    """Data URLs pass; a local path only inside the operator's --allowed-local-media-path; never a fetch."""
    head = url[:16].lower()
    if head.startswith("data:") or head.startswith(("http://", "https://", "ftp://")):
        return url  # remote URLs are refused with their own message by seqcls.multimodal
    path = Path(url[7:] if head.startswith("file://") else url)
    if media_dir is None:
        raise ApiError(400, f"{param}: local file paths are not allowed on this server; send the image as a base64 data URL "
                            "(or start the server with --allowed-local-media-path DIR).", param)
    try:
        resolved = (media_dir / path).resolve() if not path.is_absolute() else path.resolve()
        resolved.relative_to(media_dir)
    except (OSError, ValueError):
        raise ApiError(400, f"{param}: {url[:80]} is outside the allowed media folder {media_dir}; send a data URL or a file inside it.", param) from None
    return str(resolved)


def _has_image(item: Any) -> bool:
    return isinstance(item, list) and any(isinstance(p, dict) for p in item)


def _side(value: Any, param: str, media_dir: Path | None) -> tuple[Any, int]:
    """A request side as the Scorer takes it (one item, or a list of them) and its length."""
    if isinstance(value, list):
        if not value:
            raise ApiError(400, f"{param} is empty; pass at least one text.", param)
        return [_item_of(item, f"{param}[{i}]", media_dir) for i, item in enumerate(value)], len(value)
    return _item_of(value, param, media_dir), 1


def _truncation(truncate_prompt_tokens: int | None, max_tokens_per_doc: int | None = None, allow: bool | None = None) -> dict[str, Any]:
    max_length = truncate_prompt_tokens if truncate_prompt_tokens and truncate_prompt_tokens > 0 else None
    truncate = truncate_prompt_tokens is not None or max_tokens_per_doc is not None or bool(allow)
    return {"truncate": truncate, "max_length": max_length, "max_document_tokens": max_tokens_per_doc}


def _sigmoid(x: float) -> float:
    # the same formula as Scorer: scores through every route equal the Python API's
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _scores(logits: Any, raw: bool) -> list[float]:
    values = [float(row[0]) for row in logits]
    return values if raw else [_sigmoid(v) for v in values]


def _one_label(scorer: Any) -> None:
    if getattr(scorer, "num_labels", 1) != 1:
        labels = ", ".join(getattr(scorer, "labels", []) or [])
        raise ApiError(400, f"This model has {scorer.num_labels} labels ({labels}); /score and /rerank need a one-label (relevance) model.")


# ---------------------------------------------------------------- the app


def create_app(
    scorer_or_path: Any,
    *,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_batch_tokens: int | None = None,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    device: str = "auto",
    dtype: str = "auto",
    allowed_local_media_path: str | Path | None = None,
) -> FastAPI:
    """The FastAPI app of ``seqcls serve``.

    Args:
        scorer_or_path: a loaded ``Scorer`` (served at once), a model folder or Hub id (loaded in the
            background at start-up; scoring routes and /health answer 503 until then), or a
            zero-argument callable returning a Scorer (loaded likewise).
        api_key: require ``Authorization: Bearer <api_key>`` on every route but /health, /metrics and the docs.
        served_model_name: the name clients must send as ``model`` (others get 404); default: the folder's name, any name accepted.
        max_documents: most documents (pairs) per request; more get 400.
        max_body_bytes: largest request body; larger get 413 (checked on Content-Length and while reading).
        max_concurrent: most scoring requests in flight; more get 429.
        max_batch_tokens: most tokens scored in one engine call (default: the engine's pack budget).
            When the app loads the model itself, also the engine's tokens per forward pass.
        batch_window_ms: how long a request may wait for others to batch with.
        device, dtype: for a model the app loads itself.
        allowed_local_media_path: a folder whose image files requests may name by path (vision-language
            models); without it only data URLs are accepted. Remote URLs are always refused.

    Returns:
        FastAPI: the ASGI app; run it with uvicorn (``serve`` does).
    """
    scorer = None
    loader = None
    if isinstance(scorer_or_path, (str, Path)):
        model_path = str(scorer_or_path)
        label = Path(model_path).name or model_path

        def loader() -> Any:
            from .scorer import Scorer

            return Scorer(model_path, device=device, dtype=dtype, batch_tokens=max_batch_tokens)
    elif callable(scorer_or_path) and not hasattr(scorer_or_path, "tokenize"):
        loader = scorer_or_path
        label = "model"
    else:
        scorer = scorer_or_path
        label = str(getattr(scorer, "model_name", "model"))
    if max_documents < 1 or max_body_bytes < 1 or max_concurrent < 1:
        raise UsageError("max_documents, max_body_bytes and max_concurrent must be positive.")
    media_dir = None
    if allowed_local_media_path is not None:
        media_dir = Path(allowed_local_media_path).expanduser().resolve()
        if not media_dir.is_dir():
            raise UsageError(f"--allowed-local-media-path {allowed_local_media_path} is not a folder; pass an existing folder of images.")
    state = ServerState(loader, scorer, api_key=api_key or None, served_model_name=served_model_name or None,
                        max_documents=max_documents, max_body_bytes=max_body_bytes, max_concurrent=max_concurrent,
                        max_batch_tokens=max_batch_tokens, batch_window_ms=batch_window_ms, model_label=label, media_dir=media_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.scorer is not None:
            state.attach(state.scorer)
        else:
            threading.Thread(target=state.load, name="seqcls-load", daemon=True).start()
        try:
            yield
        finally:  # uvicorn has finished every in-flight request by now
            if state.batcher is not None:
                await asyncio.get_running_loop().run_in_executor(None, state.batcher.stop)
            state.pool.shutdown(wait=False)

    app = FastAPI(
        title="seqcls serve",
        version=_version(),
        summary="Score and rerank with a converted *ForSequenceClassification reranker (vLLM, Cohere, Jina and TEI shapes).",
        lifespan=lifespan,
    )
    app.state.seqcls = state
    app.add_middleware(Gate, state=state)
    security = [Depends(HTTPBearer(auto_error=False, description="Bearer <--api-key>"))] if state.api_key else []

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(UsageError)
    async def _usage_error(request: Request, exc: UsageError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _validation_message(list(exc.errors()))
        return error_response(status, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"No route {request.url.path}; see /openapi.json.", 405: f"{request.method} is not allowed on {request.url.path}.",
                   400: f"The request body is not valid JSON ({exc.detail}); send a UTF-8 JSON object."}
        return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("Internal error on %s", request.url.path)
        return error_response(500, f"Internal error ({type(exc).__name__}); this is a bug in seqcls, please report it.")

    # -- scoring

    async def run_pairs(qname: str, qvalue: Any, dname: str, dvalue: Any, *, instruction: str | None, options: dict[str, Any],
                        raw: bool, scope: dict[str, Any]) -> tuple[list[Any], list[float], int]:
        """What /score and /rerank share: limits, normalising both sides (text or content with images),
        the 1:1/1:N/N:N rule, scoring. Returns (documents as normalised, scores, prompt tokens)."""
        scorer = state.require_scorer()
        nd = len(dvalue) if isinstance(dvalue, list) else 1
        if nd > state.max_documents:
            raise ApiError(400, f"Too many documents: {nd}, over this server's limit of {state.max_documents} (--max-documents); split the request.", dname)
        queries, nq = _side(qvalue, qname, state.media_dir)
        documents, nd = _side(dvalue, dname, state.media_dir)
        if nq != 1 and nq != nd:
            raise ApiError(400, f"Input lengths must be either 1:1, 1:N or N:N (got {nq} {qname} and {nd} {dname}); "
                                "pass one query, or exactly one query per document.", dname)
        _one_label(scorer)
        logits, lengths = await state.pair_logits(queries, documents, scope, instruction=instruction, **options)
        tokens = sum(lengths)
        state.metrics.scored(len(lengths), tokens)
        return documents if isinstance(documents, list) else [documents], _scores(logits, raw), tokens

    async def score_pairs(body: ScoreRequest, scope: dict[str, Any]) -> dict[str, Any]:
        state.require_scorer()
        state.check_model(body.model)
        (qname, qvalue), (dname, dvalue) = body.sides()
        _, scores, tokens = await run_pairs(qname, qvalue, dname, dvalue, instruction=body.instruction,
                                            options=_truncation(body.truncate_prompt_tokens), raw=body.use_activation is False, scope=scope)
        return {
            "id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": state.model_name,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }

    async def rerank_docs(body: RerankRequest | AnyRerankRequest, version: str, scope: dict[str, Any]) -> Any:
        state.require_scorer()
        state.check_model(body.model)
        tei = isinstance(body, AnyRerankRequest) and body.texts is not None
        items: list[Any] = body.texts if tei else body.documents  # type: ignore[assignment]
        name = "texts" if tei else "documents"
        if not items:
            raise ApiError(400, f"{name} is empty; pass at least one document.", name)
        allow = body.truncate if isinstance(body, AnyRerankRequest) else None
        raw = body.use_activation is False or (isinstance(body, AnyRerankRequest) and body.raw_scores)
        docs, scores, tokens = await run_pairs("query", body.query, name, list(items), instruction=body.instruction, raw=raw, scope=scope,
                                               options=_truncation(body.truncate_prompt_tokens, body.max_tokens_per_doc, allow))
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        if body.top_n:
            order = order[: body.top_n]
        if tei:
            return [{"index": i, "score": scores[i], **({"text": plain_text(docs[i])} if body.return_text else {})} for i in order]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": plain_text(docs[i])}
            results.append(item)
        return {
            "id": f"rerank-{uuid.uuid4().hex}", "model": state.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results,
            "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1}},
        }

    score_doc = ("Scores query-document pairs (vLLM /score). Sides are a string or a list: one query with any number of documents "
                 "(1:1, 1:N) or as many queries as documents (N:N). Scores come back in input order.")

    async def score_endpoint(body: ScoreRequest, request: Request) -> Any:
        return JSONResponse(await score_pairs(body, request.scope))

    async def rerank_any(body: AnyRerankRequest, request: Request) -> Any:
        return JSONResponse(await rerank_docs(body, "2", request.scope))

    async def rerank_v1(body: RerankRequest, request: Request) -> Any:
        return JSONResponse(await rerank_docs(body, "1", request.scope))

    async def rerank_v2(body: RerankRequest, request: Request) -> Any:
        return JSONResponse(await rerank_docs(body, "2", request.scope))

    for route_path in ("/score", "/v1/score"):
        operation = "score" + route_path.replace("/", "_")
        app.add_api_route(route_path, score_endpoint, methods=["POST"], response_model=ScoreResponse, responses=SCORING_ERRORS,
                          summary="Score pairs", description=score_doc, dependencies=security, tags=["scoring"],
                          name=operation, operation_id=operation)

    rerank_doc = ("Ranks documents for one query, best first, cut to top_n (Cohere, Jina, vLLM). "
                  "relevance_score is a probability unless use_activation is false.")
    app.add_api_route("/rerank", rerank_any, methods=["POST"], response_model=Union[RerankResponse, list[TEIRank]],
                      responses=SCORING_ERRORS, summary="Rerank (Cohere/Jina/vLLM, or TEI with `texts`)", tags=["scoring"],
                      description=rerank_doc + " With `texts` instead of `documents` the request and the response follow TEI: "
                                               "a bare list of {index, score, text?}, best first.",
                      dependencies=security, operation_id="rerank")
    app.add_api_route("/v1/rerank", rerank_v1, methods=["POST"], response_model=RerankResponse, responses=SCORING_ERRORS,
                      summary="Rerank (Cohere v1 client)", description=rerank_doc, dependencies=security, tags=["scoring"],
                      operation_id="rerank_v1")
    app.add_api_route("/v2/rerank", rerank_v2, methods=["POST"], response_model=RerankResponse, responses=SCORING_ERRORS,
                      summary="Rerank (Cohere v2 client)", description=rerank_doc, dependencies=security, tags=["scoring"],
                      operation_id="rerank_v2")

    # -- service routes

    @app.get("/health", response_model=Health, responses=_error_responses(503), tags=["service"], summary="Liveness and readiness")
    async def health() -> Any:
        """200 once the model is loaded and serving; 503 while it loads (or if loading failed)."""
        state.require_scorer()
        return JSONResponse({"status": "ok", "model": state.model_name})

    @app.get("/v1/models", response_model=ModelList, responses=_error_responses(401), tags=["service"],
             summary="The served model (OpenAI style)", dependencies=security)
    async def models() -> Any:
        """The one model this server holds; its `id` is the name to send as `model`."""
        scorer = state.scorer
        root = str(getattr(getattr(scorer, "folder", None), "path", state.model_label))
        card = {"id": state.model_name, "object": "model", "created": state.started, "owned_by": "seqcls", "root": root,
                "max_model_len": int(getattr(scorer, "max_length", 0) or 0)}
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format 0.0.4"}})
    async def metrics() -> PlainTextResponse:
        """Requests by route and status, a latency histogram, prompt tokens and pairs scored, queue depth, batches."""
        batcher = state.batcher
        text = state.metrics.render(batcher.depth if batcher else 0, state.batcher is not None, batcher.stats if batcher else None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("seqcls")
    except Exception:  # noqa: BLE001 - not installed (source tree)
        return "0"


# ---------------------------------------------------------------- running it


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); UsageError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then (else Nagle's
    # algorithm and delayed ACKs add ~40 ms to every response)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host.") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    model: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    dtype: str = "auto",
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_batch_tokens: int | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    log_level: str = "info",
    access_log: bool = False,
    on_listen: Callable[[str], None] | None = None,
    allowed_local_media_path: str | Path | None = None,
) -> None:
    """Serve ``model`` over HTTP until SIGINT/SIGTERM (which finish the requests in flight first).

    Args:
        model: a converted folder (checked now, loaded in the background: 503 until ready) or a Scorer.
        host, port: where to listen (port 0: any free port; ``on_listen`` gets the URL).
        Others: see ``create_app``.

    Raises:
        UsageError: the folder is not a converted model, the port is taken, or loading failed.
    """
    import uvicorn

    if isinstance(model, (str, Path)):
        from .folder import load_folder

        load_folder(model)  # a wrong folder fails here, in one sentence, before anything listens
    app = create_app(model, api_key=api_key, served_model_name=served_model_name, max_documents=max_documents,
                     max_body_bytes=max_body_bytes, max_concurrent=max_concurrent, max_batch_tokens=max_batch_tokens,
                     batch_window_ms=batch_window_ms, device=device, dtype=dtype, allowed_local_media_path=allowed_local_media_path)
    sock = bind_socket(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}"
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on", timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    state: ServerState = app.state.seqcls

    def watch() -> None:
        state.ready.wait()
        if state.load_error:
            server.should_exit = True

    threading.Thread(target=watch, name="seqcls-load-watch", daemon=True).start()
    if on_listen is not None:
        on_listen(url)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once its graceful shutdown is done
        pass
    if state.load_error:
        raise UsageError(f"The model failed to load: {state.load_error}")
