"""`kernelwright e2e`: an exported package applied to a small transformer, parity and speed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli.typer_app import JsonOpt, app, console
from agent.runtime import UserError, check_device, cli_errors


def _model_config(config: Optional[Path], norm: Optional[str], preset: str) -> Any:
    from agent.outputs.e2e_model import TransformerConfig

    presets = {"small": {}, "tiny": {"vocab": 128, "d_model": 64, "heads": 2, "layers": 1, "d_ff": 128, "seq": 16,
                                     "batch": 2}}
    if preset not in presets:
        raise UserError(f"unknown --size {preset!r} (use {' or '.join(presets)})")
    values: dict[str, Any] = dict(presets[preset])
    if config is not None:
        try:
            loaded = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read the model config {config}: {e}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{config}: the model config must be a JSON object")
        values.update(loaded)
    if norm is not None:
        values["norm"] = norm
    return TransformerConfig.from_dict(values)


@app.command("e2e")
@cli_errors
def e2e_cmd(package: Path = typer.Option(..., "--package", help="An exported package (its project folder)"),
            size: str = typer.Option("small", "--size", help="small (4 layers, d_model 256) or tiny (tests)"),
            config: Optional[Path] = typer.Option(None, "--config", help="JSON object of model config overrides "
                                                  "(vocab, d_model, heads, layers, d_ff, seq, batch, norm, eps, seed)"),
            norm: Optional[str] = typer.Option(None, "--norm", help="layernorm or rmsnorm"),
            compiled: bool = typer.Option(True, "--compile/--no-compile",
                                          help="Also under torch.compile(fullgraph=True)"),
            repeats: int = typer.Option(20, "--repeats", help="Timed forwards of each model"),
            device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
            threads: Optional[int] = typer.Option(None, "--threads", help="Threads for PyTorch and the kernels "
                                                  "[default: PyTorch's]"),
            as_json: bool = JsonOpt) -> None:
    """Run a small transformer with and without the package applied: output parity and speedup."""
    from agent.outputs.e2e import E2EConfig, load_package, run

    check_device(device)
    if repeats < 1:
        raise UserError("--repeats must be at least 1")
    if threads is not None and threads < 1:
        raise UserError("--threads must be at least 1")
    model = _model_config(config, norm, size)
    pkg = load_package(package)
    report = run(pkg, E2EConfig(model=model, compiled=compiled, repeats=repeats, device=device, threads=threads))
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print(report)
    if not report["parity_ok"]:
        raise typer.Exit(1)


def _print(r: dict) -> None:
    m = r["model"]
    console.print(f"[bold]{r['package']}[/bold] on a {m['layers']}-layer transformer (d_model {m['d_model']}, "
                  f"{m['heads']} heads, {m['norm']}, batch {m['batch']} x seq {m['seq']}, {m['dtype']}), "
                  f"{r['device']}, threads {r['threads']}, torch {r['torch']}")
    for rep in r["replaced"]:
        console.print(f"  replaced {escape(rep['path'] or '(model)')}: {rep['replaced']} -> {rep['op']}")
    for path, why in r["skipped"]:
        console.print(f"  [yellow]kept[/yellow] {escape(path)}: {escape(why)}")
    table = Table("run", "output", "max abs err", "max rel err", "within tol", "base ms", "applied ms", "speedup")
    for name, run in r["runs"].items():
        t = run["timing"]
        for i, (out, p) in enumerate(run["parity"].items()):
            timing = [f"{t['base']['median_ms']:.3f} ± {t['base']['spread_ms']:.3f}",
                      f"{t['applied']['median_ms']:.3f} ± {t['applied']['spread_ms']:.3f}",
                      f"{run['speedup']:.2f}x"] if i == 0 else ["", "", ""]
            table.add_row(name if i == 0 else "", out, f"{p['max_abs']:.3g}", f"{p['max_rel']:.3g}",
                          "yes" if p["within"] else "[red]NO[/red]", *timing)
    console.print(table)
    tol = r["tolerance"]
    console.print(f"tolerance atol {tol['atol']:g}, rtol {tol['rtol']:g} (the replaced tasks' loosest); "
                  "times: median ± IQR of interleaved forwards")
    for name, run in r["runs"].items():
        calls = ", ".join(f"{t} {c['kernel']}/{c['kernel'] + c['reference']}" for t, c in run["calls"].items())
        console.print(f"{name}: kernel calls per forward: {calls or 'none'}")
    for task, why in r["reasons"].items():
        console.print(f"  [yellow]reference ran[/yellow] for {escape(task)}: {escape(why)}")

