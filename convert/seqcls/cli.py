"""The ``seqcls`` command line: one small function per command, errors formatted in one place."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import CheckFailed, SeqclsError, UsageError

app = typer.Typer(
    name="seqcls",
    help="Turn LLM rerankers into exact, verified *ForSequenceClassification checkpoints, and score with them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipes_app = typer.Typer(help="List, show and validate conversion recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")]
Device = Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu or cuda.")]
RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", "-r", help="Built-in recipe name or a recipe .yaml file; auto-detected when left out.")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit of SOURCE.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


class _RichProgress:
    def __init__(self, progress: Any):
        self._progress = progress

    def start(self, description: str, total: int) -> Callable[[int], None]:
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task, n)


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    ) as progress:
        yield _RichProgress(progress)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _plan_table(plan: dict[str, Any]) -> Table:
    table = Table(title="Conversion plan", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    tokens = ", ".join(f"{t!r} -> {i}" for t, i in zip(plan["tokens"], plan["token_ids"]))
    rows = [
        ("source", f"{plan['source']} ({plan['source_kind']})"),
        ("recipe", f"{plan['recipe']} ({plan['method']})"),
        ("architecture", f"{plan['source_architecture']} -> {plan['target_architecture']}"),
        ("head", f"{plan['num_labels']} row(s) from {plan['head_from']}{' (tied)' if plan['tied'] else ''}"),
        ("tokens", tokens),
        ("pad_token_id", str(plan["pad_token_id"])),
        ("dtype", plan["dtype"]),
        ("tensors", f"{plan['tensors']} ({_human_bytes(plan['bytes'])})"),
        ("shards", ", ".join(f"{s['file']} ({s['tensors']} tensors, {_human_bytes(s['bytes'])})" for s in plan["shards"])),
        ("output", plan["output"]),
    ]
    rows += [("note", note) for note in plan.get("notes", [])]
    for key, value in rows:
        table.add_row(key, value)
    return table


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="Local model folder, .gguf file, or Hub repo id org/name[@revision].")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create.")],
    recipe: RecipeOpt = None,
    dtype: Dtype = "auto",
    max_shard_size: Annotated[Optional[str], typer.Option("--max-shard-size", help="Largest shard, e.g. 5GB (default: the recipe's).")] = None,
    device: Device = "auto",
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the parity check.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
    revision: Revision = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow downloading pickled (.bin) weights from the Hub.")] = False,
    push_to: Annotated[Optional[str], typer.Option("--push-to", help="After converting, publish to this Hub repo id.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the --push-to repo as private.")] = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Convert a causal-LM reranker into a *ForSequenceClassification checkpoint."""
    from . import pipeline

    if push_to and not dry_run:
        from .publish import require_online, require_token

        if no_verify:
            raise UsageError("--push-to publishes only verified folders; drop --no-verify (or convert, verify and `seqcls push --force` yourself).")
        require_token()
        require_online()
    plan = pipeline.plan(source, output, recipe, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite, revision=revision, allow_pickle=allow_pickle)
    if dry_run:
        summary = plan.to_dict()
        summary["dry_run"] = True
        if json_out:
            _print_json(summary)
        elif not quiet:
            out.print(_plan_table(summary))
            out.print("Dry run: nothing was written.")
        return
    with _progress(not quiet and not json_out) as progress:
        result = pipeline.execute(plan, device=device, verify=not no_verify, overwrite=overwrite, progress=progress)
    summary = result.to_dict()
    pushed = None
    if push_to:
        from .publish import push as push_folder

        try:
            pushed = push_folder(result.output, push_to, private=private, force=False)
        except SeqclsError as exc:
            raise type(exc)(f"Converted {result.output} but did not publish it: {exc} Retry with `seqcls push {result.output} --repo-id {push_to}`.") from exc
        summary["push"] = pushed.to_dict()
    if json_out:
        _print_json(summary)
        return
    if quiet:
        return
    out.print(_plan_table(summary))
    if result.parity is not None:
        from .parity import parity_table

        out.print(parity_table(result.parity))
    out.print(f"[green]Converted[/green] {source} -> {result.output} in {result.seconds:.1f} s")
    if pushed is not None:
        _print_push(pushed)


def _print_push(result: Any) -> None:
    for warning in result.warnings:
        err.print(f"[yellow]Warning:[/yellow] {warning}", highlight=False)
    if result.up_to_date:
        out.print(f"[green]Up to date[/green]: {result.repo_id}@{result.revision} already holds these {len(result.files)} files (commit {result.commit_oid}); nothing pushed.", highlight=False)
    elif result.pr_url:
        out.print(f"[green]Opened[/green] {result.pr_url} with {len(result.files)} files (commit {result.commit_oid}).", highlight=False)
    else:
        out.print(f"[green]Pushed[/green] {len(result.files)} files to {result.repo_id}@{result.revision}: {result.commit_url}", highlight=False)


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="A folder written and verified by seqcls convert.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repo to publish to, namespace/name (created when missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private (ignored when it exists).")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to push to (created from main when missing); default main.")] = None,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", "-m", help="Commit title (default names the source and recipe).")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing to the branch.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Push even when the parity report is missing, failed or stale.")] = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Publish a verified folder to the Hub in one commit (refuses unverified folders unless --force)."""
    from .publish import push as push_folder

    if quiet or json_out:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    result = push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr, force=force)
    if json_out:
        _print_json(result.to_dict())
    elif not quiet:
        _print_push(result)


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="A folder written by seqcls convert.")],
    source: Annotated[Optional[str], typer.Option("--source", help="The original model (default: the source recorded in the folder).")] = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="Extra pairs: JSONL with query and document fields.")] = None,
    atol: Annotated[Optional[float], typer.Option("--atol", help="fp32 tolerance (default: the recipe's, 1e-4).")] = None,
    device: Device = "auto",
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file ('-' for stdout).")] = None,
    quiet: Quiet = False,
) -> None:
    """Check a converted folder against its source causal LM; exit 0 pass, 1 fail."""
    from .parity import parity_table, verify_folder

    report = verify_folder(folder, source, pairs, atol=atol, device=device)
    if json_file is not None:
        if str(json_file) == "-":
            _print_json(report.to_dict())
        else:
            json_file.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    if not quiet and str(json_file) != "-":
        out.print(parity_table(report))
    if not report.passed:
        raise CheckFailed(report.failure_message())


@recipes_app.command("list")
def recipes_list(json_out: JsonOut = False) -> None:
    """List the built-in recipes."""
    from .recipe import builtin_recipes

    recipes = builtin_recipes()
    if json_out:
        _print_json([{"name": r.name, "method": r.method, "tokens": r.tokens, "architectures": r.match.architectures, "description": r.description} for r in recipes])
        return
    table = Table(title="Built-in recipes", title_justify="left")
    for column in ("name", "method", "tokens", "architectures", "description"):
        table.add_column(column, overflow="fold")
    for r in recipes:
        table.add_row(r.name, r.method, ", ".join(map(repr, r.tokens)), ", ".join(r.match.architectures), r.description)
    out.print(table)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Built-in recipe name or a recipe .yaml file.")]) -> None:
    """Print a recipe, fully resolved, as YAML."""
    from .recipe import load_recipe

    sys.stdout.write(load_recipe(name).to_yaml())


@recipes_app.command("validate")
def recipes_validate(files: Annotated[list[Path], typer.Argument(help="Recipe YAML files to check.")], quiet: Quiet = False) -> None:
    """Validate recipe files (for CI): exit 1 with file:line: field.path: message per error."""
    from .recipe import validate_file

    failed = False
    for path in files:
        problems = validate_file(path)
        for problem in problems:
            sys.stdout.write(problem + "\n")
        failed = failed or bool(problems)
        if not problems and not quiet:
            sys.stdout.write(f"{path}: ok\n")
    if failed:
        raise typer.Exit(1)


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="Local model folder, .gguf file, or Hub repo id.")],
    revision: Revision = None,
    json_out: JsonOut = False,
) -> None:
    """Show architecture, vocabulary, tied head, size, candidate answer tokens and matching recipes."""
    from .inspect import inspect_source

    info = inspect_source(source, revision=revision)
    if json_out:
        _print_json(info)
        return
    table = Table(title=f"{source}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in info.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, ensure_ascii=False)
        table.add_row(key, str(value))
    out.print(table)


from .runtime.cli_score import score_command  # noqa: E402
from .runtime.cli_serve import serve_command  # noqa: E402

app.command("score")(score_command)
app.command("serve")(serve_command)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and maps errors to one line and exit codes 0/1/2."""
    import click

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="seqcls", standalone_mode=False)
    except SeqclsError as exc:
        if debug:
            raise
        from rich.markup import escape

        err.print(f"[bold red]Error:[/bold red] {escape(str(exc))}", highlight=False)  # messages may hold [brackets]
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2 if exc.exit_code not in (0, 1) else exc.exit_code
    except click.exceptions.Abort:
        err.print("Aborted.")
        return 130
    except KeyboardInterrupt:
        err.print("Interrupted; no output folder was left half-written.")
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
