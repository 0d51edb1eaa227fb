"""`python -m engine.cli`: the same as the `radbridge` command."""

from engine.cli import app

app()
