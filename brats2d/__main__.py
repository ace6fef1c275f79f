"""`python -m brats2d ...` is the same as the `brats2d` command."""

from brats2d.cli.main import cli

if __name__ == "__main__":
    cli()
