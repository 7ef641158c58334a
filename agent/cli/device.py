"""`kernelwright device`: this machine's measured ceilings for the timing cores and threads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from agent.cli.typer_app import DbOpt, DeviceOpt, JsonOpt, app, console, err_console
from agent.runtime import UserError, cli_errors, open_store, options
from sandbox.cpus import usable

RemeasureOpt = typer.Option(False, "--remeasure", help="Measure again even if the store has this machine's ceilings")
ImportOpt = typer.Option(None, "--import", help="Store the ceilings a GPU device script measured (JSON)")
QuickOpt = typer.Option(False, "--quick", hidden=True, help="Tests: tiny sizes (the figures are not ceilings)")


@app.command("device")
@cli_errors
def device_cmd(db: str | None = DbOpt, as_json: bool = JsonOpt, remeasure: bool = RemeasureOpt,
               import_file: Path | None = ImportOpt, quick: bool = QuickOpt, device: str = DeviceOpt) -> None:
    """The machine's ceilings (memory bandwidth in and out of cache, fp32 FMA throughput, and on a
    GPU tensor-core rates per dtype) for what evaluations time on; what the store lacks is
    measured and stored."""
    from evaluator import ceilings, gpu_ceilings
    from store.ceilings import load_ceilings, save_ceilings

    opts = options(db, device, None)
    store = open_store(opts.db)  # first: a bad --db fails before any work
    if import_file is not None:
        try:
            found: Any = ceilings.from_device_json(import_file)
        except (OSError, json.JSONDecodeError, ceilings.CeilingError) as e:
            raise UserError(f"--import {import_file}: {e}") from None
        save_ceilings(store, found)
        _show(found, measured=False, as_json=as_json)
        return
    quick = quick or opts.ceilings == "quick"  # KERNELWRIGHT_CEILINGS=quick: as evaluations get them
    threads = opts.threads
    try:
        if opts.device == "cuda":
            cores: tuple[int, ...] = ()
            fingerprint_id = gpu_ceilings.fingerprint_id(threads)
        else:
            cores, fingerprint_id = opts.timing_cpus or usable(), ceilings.cpu_fingerprint_id(threads)
        found = None if remeasure else load_ceilings(store, fingerprint_id, cores, threads)
        if found is not None and found.details.get("quick") and not quick:  # tests' tiny figures are no ceilings
            found = None
        measured = found is None
        if found is None:
            if not as_json:
                what = "the GPU" if opts.device == "cuda" else f"cores {','.join(map(str, cores))} with {threads} thread(s)"
                err_console.print(f"measuring the ceilings of {what} (seconds; keep the machine quiet)...")
            if opts.device == "cuda":
                found = gpu_ceilings.measure(threads, opts.cache_dir, quick)
            else:
                found = ceilings.measure(cores, threads, fingerprint_id=fingerprint_id, cache_dir=opts.cache_dir,
                                         sizes=ceilings.Sizes.tiny() if quick else ceilings.Sizes())
            save_ceilings(store, found)
    except ceilings.CeilingError as e:
        raise UserError(str(e)) from None
    _show(found, measured, as_json)


def _show(c: Any, measured: bool, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({**c.to_json(), "measured_now": measured}))
        return
    where = f"cores {','.join(map(str, c.cores))}, " if c.cores else ""
    console.print(f"[bold]{c.device}[/bold]  fingerprint {c.fingerprint_id}  {where}{c.threads} thread(s)  "
                  f"{'measured now' if measured else 'from the store'}, {c.measured_at[:19]} UTC")
    table = Table("ceiling", "copy GB/s", "read GB/s", "working set", box=box.SIMPLE_HEAD, pad_edge=False)
    for lv in c.details.get("levels", ()):
        table.add_row(f"in {lv['level']}", f"{lv['copy_gbs']:.1f}", f"{lv['read_gbs']:.1f}", _bytes(lv["bytes"]))
    if not c.details.get("levels"):
        table.add_row("in cache", f"{c.copy_gbs_cached:.1f}", f"{c.read_gbs_cached:.1f}", "-")
    table.add_row("out of cache", f"{c.copy_gbs:.1f}", f"{c.read_gbs:.1f}",
                  _bytes(c.details["uncached_bytes"]) if "uncached_bytes" in c.details else "-")
    console.print(table)
    console.print(f"fp32 FMA {c.fma_gflops:.1f} GFLOP/s   last-level cache {_bytes(c.llc_bytes)}   "
                  "(each: the best of its repetitions; copy counts bytes read + written)")
    for dtype, tflops in (c.details.get("tflops") or {}).items():
        console.print(f"{dtype} tensor cores {tflops:.1f} TFLOP/s")


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"
