"""`flowergan data ...`: shard, synth, fetch, verify (filled by the data issue)."""

import typer

from flowergan.cli import app

data_app = typer.Typer(no_args_is_help=True, help="Turn images into validated WebDataset shards.")
app.add_typer(data_app, name="data")
