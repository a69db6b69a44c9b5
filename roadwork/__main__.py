"""`python -m roadwork` runs the command line."""

from roadwork.cli import app

app(prog_name="roadwork")
