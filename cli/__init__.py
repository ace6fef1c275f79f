"""Command-line interface (installed as brats2d.cli)."""
