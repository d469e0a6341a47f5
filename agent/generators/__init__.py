"""Generation backends behind the Generator protocol (see base.py)."""

from __future__ import annotations

from agent.config import Config, select_backend
from agent.generators.base import Generator
from agent.generators.catalog import with_named_model
from agent.generators.llama_cpp import load_generator as load_local_generator
from agent.generators.openai_compat import load_remote_generator

__all__ = ["load_generator"]


async def load_generator(config: Config) -> Generator:
    """The configured backend: ``[model] backend``, or Tabby when ``tabby_url`` is set."""
    config = with_named_model(select_backend(config))
    if config.model.backend == "openai":
        return await load_remote_generator(config, lambda: load_local_generator(config))
    return await load_local_generator(config)
