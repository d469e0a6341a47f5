"""The command line, ``python -m agent …``: run, chat, prompt, doctor, ingest, search,
models and persona (see main.py)."""

from agent.cli.main import main

__all__ = ["main"]
