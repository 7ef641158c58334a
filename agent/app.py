"""The typer application and what its commands share; commands live in agent/cli*.py."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from agent.runtime import UserError

app = typer.Typer(help="kernelwright: LLM-driven kernel optimization with honest, sandboxed evaluation.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tasks_app = typer.Typer(help="List and check tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
console = Console()
err_console = Console(stderr=True)

DbOpt = typer.Option(None, "--db", help="Store: SQLite path or SQLAlchemy URL [env KERNELWRIGHT_DB; default kernelwright.db]")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda")
TimeoutOpt = typer.Option(None, "--timeout", help="Seconds per candidate [env KERNELWRIGHT_TIMEOUT; default 120]")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object")


def read_candidate(path: Path) -> str:
    from evaluator.static import defines_modelnew

    if not path.is_file():
        raise UserError(f"candidate file not found: {path}")
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    try:
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    if not defines_modelnew(source):
        raise UserError(f"{path} defines no class ModelNew")
    return source
