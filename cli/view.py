"""`brats2d view`: thin click wrapper around brats2d.view (added to the `brats2d` group by cli/main.py)."""

from __future__ import annotations

from pathlib import Path

import click

from .options import parse_device


@click.command()
@click.argument("pred_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--raw", type=click.Path(exists=True, file_okay=False), help="the raw patient folders (scans, seg)")
@click.option("--run-dir", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="a trained run: adds the upload page that predicts dropped NIfTI files (repeat for an ensemble)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; anything but loopback exposes the scans to the network")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port")
@click.option("--device", default="auto", callback=parse_device, show_default=True,
              help="for uploads: auto | cpu | cuda | cuda:N")
@click.option("--max-upload-mb", type=click.IntRange(1, 4096), default=400, show_default=True)
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="uploads: 8 flips/rotations, giving the uncertainty map (8x the predict time)")
@click.option("--verbose", is_flag=True, help="log every request")
def view(pred_dir: str | None, raw: str | None, run_dir: tuple[str, ...], host: str, port: int, device: str,
         max_upload_mb: int, tta: bool, verbose: bool) -> None:
    """Serve a web viewer over PRED_DIR (the output of `brats2d predict`) and the raw scans. Not for clinical use."""
    from brats2d.view.app import make_server, serve_forever
    from brats2d.view.server import NiivueMissing, is_loopback

    if pred_dir is None and not run_dir:
        raise click.UsageError("give PRED_DIR (predict's output), --run-dir (to upload scans), or both")
    try:
        server = make_server(Path(pred_dir) if pred_dir else None, Path(raw) if raw else None,
                             [Path(r) for r in run_dir], host, port, device, max_upload_mb, tta, quiet=not verbose)
    except NiivueMissing as e:
        raise click.ClickException(str(e)) from None
    if not is_loopback(host):
        click.secho(f"warning: serving on {host}: anyone who can reach this address can see these scans "
                    "(no login, no encryption)", fg="yellow", err=True)
    n = len(server.catalog.cases())
    click.echo(f"brats2d view: {n} patient{'s' * (n != 1)}{', uploads on' if run_dir else ''}. Not for clinical use.")
    click.echo(f"open {server.url}  (Ctrl-C stops)")
    serve_forever(server)
