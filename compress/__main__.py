"""`python -m compress`."""

from compress.cli import run

run()
