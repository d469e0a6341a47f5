"""The Generator seam: anything that turns chat messages into a stream of text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from agent.config import ModelConfig

Role = Literal["system", "user", "assistant"]


class GeneratorError(Exception):
    """A generation backend failed in a way the user can act on (message names the setting)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.3
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int = -1
    max_tokens: int = 512
    # A JSON schema the output must follow (grammar-constrained on llama.cpp; background
    # jobs such as memory extraction use it). Generators without grammars ignore it.
    json_schema: str | None = None
    # Whose conversation this prompt continues (the core passes the channel). The local
    # engine takes cached runs that moved (shifted, or moved back behind a new summary) only
    # from a sequence or saved state of the same conversation; another lends a prefix only.
    conversation: str | None = None

    @classmethod
    def from_config(cls, model: ModelConfig) -> SamplingParams:
        return cls(
            temperature=model.temperature,
            top_p=model.top_p,
            top_k=model.top_k,
            min_p=model.min_p,
            repeat_penalty=model.repeat_penalty,
            seed=model.seed,
            max_tokens=model.max_tokens,
        )


@dataclass(slots=True)
class GenerationStats:
    """Counters of one generation; filled in while the stream runs."""

    prompt_tokens: int = 0
    # Prompt tokens served from the model's cache: the common prefix with what it held...
    cached_tokens: int = 0
    # ...and cached runs after it that moved and were shifted into place (llama.cpp only).
    shifted_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens - self.shifted_tokens


@dataclass(slots=True)
class TokenStream:
    """An async iterator of text pieces whose :attr:`stats` are complete once it is exhausted."""

    _pieces: AsyncIterator[str]
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces

    async def aclose(self) -> None:
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()


class Generator(Protocol):
    """A text generation backend. Token counts use the model's own tokenizer."""

    @property
    def name(self) -> str: ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def concurrency(self) -> int:
        """How many generations the backend serves at once (the scheduler's slot count)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as it appears inside a prompt (no BOS)."""
        ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the whole prompt that :meth:`stream` would evaluate for ``messages``."""
        ...

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The exact prompt text :meth:`stream` would evaluate (for the prompt inspector)."""
        ...

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream: ...

    async def aclose(self) -> None: ...
