"""`kernelwright sandbox build-image`: the docker sandbox's image, built from this Python environment."""
from __future__ import annotations

import json
from typing import Optional

import typer

from agent.cli.typer_app import JsonOpt, app, console, err_console
from agent.runtime import UserError, cli_errors
from sandbox.docker import DockerUnavailable, client_or_raise
from sandbox.image import ImageSpec, build_image

sandbox_app = typer.Typer(help="The docker sandbox (--sandbox docker): build its image.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("build-image")
@cli_errors
def build_image_cmd(
    tag: Optional[str] = typer.Option(None, "--tag", help="Image tag [default: kernelwright-sandbox:<hash of the inputs>]"),
    skip: Optional[list[str]] = typer.Option(None, "--skip", help="Leave out this distribution (repeatable), e.g. triton on CPU"),
    as_json: bool = JsonOpt,
) -> None:
    """Build the docker sandbox's image locally (no registry): this interpreter, torch and what a worker loads."""
    try:
        client = client_or_raise()
    except DockerUnavailable as e:
        raise UserError(f"{e} (as root, scripts/start_docker.sh installs and starts one)") from None
    say = err_console.print if as_json else console.print
    try:
        info = build_image(client, ImageSpec(skip=tuple(skip or ())), tag, say=lambda s: say(s, highlight=False))
    except RuntimeError as e:
        raise UserError(str(e)) from None
    if as_json:
        typer.echo(json.dumps({"tag": info.tag, "size_bytes": info.size_bytes, "seconds": round(info.seconds, 1),
                               "reused": info.reused, "files": info.files}))
        return
    what = "unchanged, reused" if info.reused else f"built in {info.seconds:.0f} s"
    typer.echo(f"{info.tag}  {info.size_bytes / 1e9:.2f} GB, {info.files} files ({what})")
    typer.echo(f"use it with: kernelwright eval TASK CANDIDATE --sandbox docker --image {info.tag}")
