"""``seqcls serve``: the HTTP server command (registered in ``seqcls.cli``).

Also runnable on its own: ``python -m seqcls.runtime.cli_serve MODEL --port 8000``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .limits import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_DOCUMENTS


def serve_command(
    model: Annotated[str, typer.Argument(help="A folder written by `seqcls convert` (or a Hub repo id of one).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    device: Annotated[str, typer.Option("--device", help="auto (every GPU when present), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")] = "auto",
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="SEQCLS_API_KEY", help="Require 'Authorization: Bearer KEY' (or set SEQCLS_API_KEY).")] = None,
    served_model_name: Annotated[Optional[str], typer.Option("--served-model-name", help="The model name clients send; others get 404 (default: the folder's name, any name accepted).")] = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option("--max-batch-tokens", min=1, help="Tokens per engine call and forward pass (default 64k on GPU, 4k on CPU).")] = None,
    max_documents: Annotated[int, typer.Option("--max-documents", min=1, help="Most documents (pairs) in one request; more get 400.")] = DEFAULT_MAX_DOCUMENTS,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Largest request body in bytes; larger get 413.")] = DEFAULT_MAX_BODY_BYTES,
    max_concurrent: Annotated[int, typer.Option("--max-concurrent", min=1, help="Most scoring requests in flight; more get 429.")] = DEFAULT_MAX_CONCURRENT,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", min=0.0, help="How long a request may wait for others to be batched with.")] = DEFAULT_BATCH_WINDOW_MS,
    log_level: Annotated[str, typer.Option("--log-level", help="critical, error, warning, info or debug.")] = "info",
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    allowed_local_media_path: Annotated[Optional[str], typer.Option("--allowed-local-media-path", help="Folder whose images requests may name by file path (vision-language models); otherwise only data URLs.")] = None,
) -> None:
    """Serve a converted model over HTTP: /score, /rerank, /v1/rerank, /v2/rerank (vLLM, Cohere, Jina, TEI)."""
    import logging

    from rich.console import Console

    from .server import serve

    level = log_level.lower()
    if level not in ("critical", "error", "warning", "info", "debug"):
        from ..errors import UsageError

        raise UsageError(f"Unknown --log-level {log_level!r}; use critical, error, warning, info or debug.")
    logging.basicConfig(level=level.upper(), format="%(levelname)s:     %(message)s")
    err = Console(stderr=True, soft_wrap=True)

    def listening(url: str) -> None:
        if level in ("info", "debug"):
            auth = " (API key required)" if api_key else ""
            err.print(f"seqcls serve: {model} on {url}{auth}; loading the model (503 until ready), Ctrl-C stops.", highlight=False)
        sys.stderr.flush()

    serve(model, host=host, port=port, device=device, dtype=dtype, api_key=api_key, served_model_name=served_model_name,
          max_batch_tokens=max_batch_tokens, max_documents=max_documents, max_body_bytes=max_body_bytes,
          max_concurrent=max_concurrent, batch_window_ms=batch_window_ms, log_level=level, access_log=access_log,
          on_listen=listening, allowed_local_media_path=allowed_local_media_path)


def main(argv: list[str] | None = None) -> int:
    """Run ``serve_command`` alone, with the CLI's error formatting (one line, exit code 2)."""
    import click

    from ..errors import SeqclsError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve_command)
    try:
        app(args=sys.argv[1:] if argv is None else argv, prog_name="seqcls serve", standalone_mode=False)
    except SeqclsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
