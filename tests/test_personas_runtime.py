"""Personas at run time: assignment, `!persona`, the prompt, lorebooks, greetings, bad setups."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.console import ConsoleAdapter
from agent.app import App, build_core
from agent.cli.main import _prompt
from agent.config import (
    ChatConfig,
    Config,
    ContextConfig,
    ModelConfig,
    PersonaConfig,
    PersonasConfig,
    RetrievalConfig,
    StorageConfig,
)
from agent.events import Inbound
from agent.generators.base import ChatMessage, SamplingParams, TokenStream
from agent.prompt.personas import PersonaError, Personas, Place, load_registry
from agent.runtime.core import Core
from memory.history import SqlHistoryStore
from memory.records import Status
from personas.card import Lorebook, LoreEntry, PersonaCard, Sampler
from personas.prompt import system_text
from personas.registry import BUILTIN_DIR, Registry
from tests.support.fakes import FakeGenerator, RecordingAdapter

PIRATE = PersonaCard(
    name="Hook",
    system_prompt="You are {{char}}, talking to {{user}}.",
    post_history_instructions="Say arr.",
    sampler=Sampler(temperature=1.5, top_k=7, max_tokens=30),
    lorebook=Lorebook(
        token_budget=20,
        scan_depth=1,
        entries=(LoreEntry(keys=("crocodile",), content="The crocodile ate a clock."),),
    ),
)


class ParamsGenerator(FakeGenerator):
    """Also records the sampling parameters of each reply."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.params: list[SamplingParams] = []

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        self.params.append(params)
        return super().stream(messages, params)


def make_config(tmp_path: Path | None = None, **personas: Any) -> Config:
    storage = StorageConfig(data_dir=tmp_path / "data") if tmp_path else StorageConfig()
    return Config(
        storage=storage,
        model=ModelConfig(max_tokens=64, temperature=0),
        persona=PersonaConfig(system_prompt="You are a test."),
        personas=PersonasConfig.model_validate({"cards": {"pirate": PIRATE}, **personas}),
        chat=ChatConfig(safety_margin_tokens=8),
        context=ContextConfig(date="off"),
        retrieval=RetrievalConfig(enabled=False),
    )


def message(
    text: str,
    channel: str = "discord:100",
    *,
    author: str = "alice",
    admin: bool = False,
    server: str | None = "7",
    parent: str | None = None,
) -> Inbound:
    return Inbound(
        platform=channel.split(":", 1)[0], channel_key=channel, author_id=author,
        author_name=author, text=text, server_id=server, parent_key=parent, is_admin=admin,
    )  # fmt: skip


async def ask(core: Core, adapter: RecordingAdapter, inbound: Inbound) -> str:
    reply = await (await core.submit(inbound, adapter))
    assert reply.status is Status.DONE, reply.error
    return reply.text


ASSIGNED = {
    "platforms": {"discord": "beseda-en"},
    "servers": {"discord:7": "beseda-ru"},
    "channels": {"discord:100": "pirate", "discord:556": "beseda-en"},
}


async def test_assignment_most_specific_wins_and_threads_inherit(
    history: SqlHistoryStore,
) -> None:
    config = make_config(**ASSIGNED)
    personas = Personas(config, load_registry(config), history, FakeGenerator())

    async def who(place: Place) -> str:
        return (await personas.choose(place)).entry.id

    assert await who(Place("console:local")) == "beseda"  # the [persona] section
    assert await who(Place("discord:1")) == "beseda-en"  # platform
    assert await who(Place("discord:2", "7")) == "beseda-ru"  # server
    assert await who(Place("discord:2", "8")) == "beseda-en"  # another server: platform
    assert await who(Place("discord:100", "7")) == "pirate"  # channel
    # A thread without its own assignment has its parent channel's persona...
    assert await who(Place("discord:555", "7", "discord:100")) == "pirate"
    # ...a thread with one keeps it.
    assert await who(Place("discord:556", "7", "discord:100")) == "beseda-en"
    # A run-time choice for the parent channel reaches its threads too.
    await personas.switch(Place("discord:100"), "beseda-ru")
    assert await who(Place("discord:555", "7", "discord:100")) == "beseda-ru"
    # And one for the thread itself wins over everything.
    await personas.switch(Place("discord:556"), "pirate")
    assert await who(Place("discord:556", "7", "discord:100")) == "pirate"
    reason = (await personas.choose(Place("discord:555", "7", "discord:100"))).reason
    assert reason == "chosen for its parent channel with !persona"


async def test_persona_prompt_sampler_and_post_history(history: SqlHistoryStore) -> None:
    generator = ParamsGenerator()
    core = build_core(make_config(**ASSIGNED), history, generator)
    adapter = RecordingAdapter()
    await ask(core, adapter, message("hello", author="Wendy"))
    [call] = generator.calls
    assert call[0] == ChatMessage("system", "You are Hook, talking to Wendy.")
    # Post-history instructions are in the last turn, before the person's words.
    assert call[-1] == ChatMessage("user", "Say arr.\n\nhello")
    params = generator.params[0]
    assert (params.temperature, params.top_k, params.max_tokens) == (1.5, 7, 30)
    assert params.top_p == ModelConfig().top_p  # not in the preset: [model]'s
    prompt = await core.prompt_for("discord:100", "next")
    assert prompt.persona == "pirate"
    # The budget reserves the persona's reply length, not [model] max_tokens.
    assert prompt.budget == generator.n_ctx - 30 - 8
    # Another channel keeps the default persona and [model] sampling.
    await ask(core, adapter, message("hi", "console:local", server=None))
    assert generator.calls[-1][0] == ChatMessage("system", "You are a test.")
    # (The core names the conversation, so the engine keeps its cached runs to it.)
    default = SamplingParams.from_config(make_config().model)
    assert generator.params[-1] == replace(default, conversation="console:local")


async def test_admin_switches_and_others_are_refused(history: SqlHistoryStore) -> None:
    generator = FakeGenerator()
    core = build_core(make_config(**ASSIGNED), history, generator)
    adapter = RecordingAdapter()
    shown = await ask(core, adapter, message("!persona"))
    assert shown == "Persona here: pirate (Hook), [personas] channels.discord:100."
    refused = await ask(core, adapter, message("!persona beseda-ru", author="mallory"))
    assert refused == "Only admins can switch the persona."
    assert (await history.channel_state("discord:100")).persona is None
    unknown = await ask(core, adapter, message("!persona nobody", admin=True))
    assert "unknown persona 'nobody'" in unknown
    switched = await ask(core, adapter, message("!persona beseda-ru", admin=True))
    assert switched == "Persona here is now beseda-ru (Беседа)."
    # Beseda's own words follow the persona's language from now on (agent/i18n).
    listed = await ask(core, adapter, message("!personas"))
    assert listed.startswith("Персоны:\n")
    assert "- beseda-ru: Беседа [ru] (здесь)" in listed
    assert "- pirate: Hook" in listed
    await ask(core, adapter, message("привет"))
    russian = Registry.load([BUILTIN_DIR]).get("beseda-ru")
    assert russian is not None
    assert generator.calls[-1][0].content == system_text(russian.card, "alice")
    back = await ask(core, adapter, message("!persona reset", admin=True))
    assert back == "Здесь снова персона из настроек: pirate (Hook)."
    # The configured persona has no language, and "!persona" has no words of its own: the
    # channel's latest messages ("привет") tell the language.
    shown = await ask(core, adapter, message("!persona"))
    assert shown == (
        "Персона здесь: pirate (Hook), так задано в config.toml: [personas] channels.discord:100."
    )
    # Commands and their answers never reach the model.
    assert all("!persona" not in m.content for call in generator.calls for m in call)


async def test_switch_survives_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    adapter = RecordingAdapter()
    async with App.open(config, FakeGenerator()) as app:
        await ask(app.core, adapter, message("!persona beseda-en", "discord:9", admin=True))
    generator = FakeGenerator()
    async with App.open(config, generator) as app:
        prompt = await app.core.prompt_for("discord:9", "still you?")
        assert prompt.persona == "beseda-en"
        await ask(app.core, adapter, message("still you?", "discord:9"))
        assert "Always answer in English" in generator.calls[-1][0].content
        assert (await app.core.prompt_for("discord:10", "x")).persona == "beseda"


async def test_lorebook_lands_in_the_volatile_block_and_the_prefix_is_unchanged(
    history: SqlHistoryStore,
) -> None:
    generator = FakeGenerator()
    core = build_core(make_config(**ASSIGNED), history, generator)
    adapter = RecordingAdapter()
    await ask(core, adapter, message("hello there"))
    await ask(core, adapter, message("what about the Crocodile?"))
    await ask(core, adapter, message("and the ship?"))
    first, second, third = generator.calls
    # Everything before the new message is the previous prompt plus its reply, byte for byte.
    assert second[: len(first) - 1] == first[:-1]
    assert second[len(first) - 1].content == "hello there"
    assert second[-1].content == (
        "Say arr.\nBackground that may be relevant:\nThe crocodile ate a clock.\n\n"
        "what about the Crocodile?"
    )
    # scan_depth 1: the entry leaves with the message that triggered it; the history holds
    # only what was said, so the prefix is unchanged again.
    assert third[: len(second) - 1] == second[:-1]
    assert "crocodile ate" not in third[-1].content
    assert third[len(second) - 1].content == "what about the Crocodile?"


async def test_lorebook_scans_the_recent_messages(history: SqlHistoryStore) -> None:
    deep = PIRATE.model_copy(
        update={
            "lorebook": Lorebook(
                scan_depth=3, entries=(LoreEntry(keys=("crocodile",), content="Tick tock."),)
            )
        }
    )
    config = make_config(cards={"pirate": deep}, default="pirate")
    # Not an echo: a reply quoting the entry would keep it out (it is in the window then).
    generator = FakeGenerator(lambda _messages: "aye")
    core = build_core(config, history, generator)
    adapter = RecordingAdapter()
    shown = []
    for text in ("a crocodile!", "one", "two", "three"):
        await ask(core, adapter, message(text, "console:x", server=None))
        shown.append("Tick tock." in generator.calls[-1][-1].content)
    # Three messages deep: the new one and the two before it (the replies count too).
    assert shown == [True, True, False, False]


async def test_lorebook_entry_a_turn_in_the_window_quotes_is_not_inserted(
    history: SqlHistoryStore,
) -> None:
    """What is new each turn stays small: an entry the window shows already (here the
    person pasted it) is left out, and comes back once that turn has left the window."""
    fact = "The crocodile   ate a CLOCK."
    card = PIRATE.model_copy(
        update={
            "lorebook": Lorebook(
                scan_depth=3, entries=(LoreEntry(keys=("crocodile",), content=fact),)
            )
        }
    )
    core = build_core(
        make_config(cards={"pirate": card}, default="pirate"),
        history,
        gen := FakeGenerator(lambda _messages: "aye"),
    )
    adapter = RecordingAdapter()
    shown = []
    for text in (
        "a crocodile?",
        "you said: the crocodile ate a clock. And then, crocodile?",
        "crocodile again",
        "!reset",
        "crocodile once more",
    ):
        await ask(core, adapter, message(text, "console:x", server=None))
        if not text.startswith("!"):
            shown.append("ate a CLOCK" in gen.calls[-1][-1].content)
    # The quote (spacing and case aside) is in the window for the next turns too; !reset
    # starts the window afresh.
    assert shown == [True, False, False, True]


async def test_lorebook_budget_in_the_prompt(history: SqlHistoryStore) -> None:
    tight = PIRATE.model_copy(
        update={
            "lorebook": Lorebook(
                token_budget=6,
                entries=(
                    LoreEntry(keys=("sea",), content="one two three four five six seven"),
                    LoreEntry(keys=("sea",), content="short fact", priority=1),
                ),
            )
        }
    )
    config = make_config().model_copy(
        update={"personas": PersonasConfig(default="tight", cards={"tight": tight})}
    )
    generator = FakeGenerator()
    core = build_core(config, history, generator)
    await ask(core, RecordingAdapter(), message("the sea", "console:x", server=None))
    last = generator.calls[-1][-1].content
    assert "short fact" in last
    assert "one two three" not in last  # over the budget


async def test_lorebook_budget_counts_entries_as_shown(history: SqlHistoryStore) -> None:
    """{{user}} is replaced before the entry is counted: a long name can push it out."""
    tight = PIRATE.model_copy(
        update={
            "lorebook": Lorebook(
                token_budget=6,
                entries=(LoreEntry(keys=("sea",), content="{{user}} fears the sea"),),
            )
        }
    )
    config = make_config().model_copy(
        update={"personas": PersonasConfig(default="tight", cards={"tight": tight})}
    )
    generator = FakeGenerator()
    core = build_core(config, history, generator)
    adapter = RecordingAdapter()
    await ask(core, adapter, message("the sea", "console:x", author="Ann", server=None))
    assert "Ann fears the sea" in generator.calls[-1][-1].content  # 4 words: fits
    long_name = "Anna Maria Josephine van der Berg"
    await ask(core, adapter, message("the sea", "console:y", author=long_name, server=None))
    assert "fears the sea" not in generator.calls[-1][-1].content  # 9 words: over 6


async def test_greeting_is_posted_once_per_persona(history: SqlHistoryStore) -> None:
    greeter = PIRATE.model_copy(update={"greeting": "Ahoy, {{user}}! {{char}} here."})
    config = make_config(greeting=True, default="greeter", cards={"greeter": greeter})
    generator = FakeGenerator()
    core = build_core(config, history, generator)
    adapter = RecordingAdapter()
    await ask(core, adapter, message("hi", "console:x", author="Wendy", server=None))
    greeting, answer = adapter.replies
    assert greeting.final == "Ahoy, Wendy! Hook here."
    assert answer.final is not None
    assert answer.final.startswith("echo:")
    await ask(core, adapter, message("again", "console:x", server=None))
    assert len(adapter.replies) == 3  # no second greeting
    # A persona without a greeting posts none after a switch; the model never sees one.
    await ask(core, adapter, message("!persona beseda-ru", "console:x", admin=True))
    await ask(core, adapter, message("привет", "console:x", server=None))
    assert [r.final for r in adapter.replies[3:]][1].startswith("Здравствуйте, alice!")
    assert all("Ahoy" not in m.content for call in generator.calls for m in call)
    roles = [m.role for m in await history.conversation("console:x", limit=None)]
    assert roles.count("notice") == 3  # two greetings, one command answer


async def test_unknown_persona_in_config_is_a_clear_error(history: SqlHistoryStore) -> None:
    config = make_config(channels={"discord:1": "nope"})
    with pytest.raises(PersonaError, match=r"\[personas\] channels.discord:1: unknown persona"):
        build_core(config, history, FakeGenerator())
    with pytest.raises(PersonaError, match=r"\[personas\] default: unknown persona 'gone'"):
        build_core(make_config(default="gone"), history, FakeGenerator())


async def test_broken_card_file_is_skipped_and_the_agent_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "broken.toml").write_text('name = "Broken"\n[sampler]\ntop_p = 7\n', "utf-8")
    (folder / "fine.toml").write_text('name = "Fine"\n', "utf-8")
    config = make_config(tmp_path, folder=str(folder), channels={"discord:1": "broken"})
    with caplog.at_level(logging.ERROR):
        async with App.open(config, FakeGenerator()) as app:
            assert "broken.toml: sampler.top_p" in caplog.text
            # The assignment to the broken card falls back to the next rule.
            assert (await app.core.prompt_for("discord:1", "x")).persona == "beseda"
            assert (await app.core.prompt_for("discord:2", "x")).persona == "beseda"


async def test_card_too_large_for_the_context_is_skipped_naming_the_field(
    history: SqlHistoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    big = PersonaCard(name="Big", description=" ".join(["word"] * 400))
    config = make_config(cards={"big": big, "pirate": PIRATE})
    with caplog.at_level(logging.ERROR):
        personas = Personas(config, load_registry(config), history, FakeGenerator(n_ctx=300))
    problem = personas.registry.skipped["big"]
    assert problem.startswith("config: personas.cards.big: the card needs")
    assert "shorten description (400 tokens)" in problem
    assert "personas.cards.big" in caplog.text
    assert personas.registry.get("pirate") is not None
    # As the default it cannot be skipped: the start-up fails with the reason.
    with pytest.raises(PersonaError, match=r"was skipped: config: personas\.cards\.big"):
        Personas(
            make_config(default="big", cards={"big": big}),
            load_registry(make_config(cards={"big": big})),
            history,
            FakeGenerator(n_ctx=300),
        )


async def test_a_model_override_that_cannot_be_honoured_is_reported(
    history: SqlHistoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    other = PersonaCard(name="Other", model="llama-70b")
    with caplog.at_level(logging.WARNING):
        build_core(make_config(cards={"other": other}), history, FakeGenerator())
    assert "config: personas.cards.other: model = 'llama-70b' is not honoured" in caplog.text


@pytest.mark.parametrize(("persona", "expected"), [
    ("beseda-en", "Always answer in English"), ("beseda-ru", "Всегда отвечай по-русски"),
])  # fmt: skip
async def test_builtin_personas_appear_in_prompt_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], persona: str, expected: str
) -> None:
    config = make_config(tmp_path, default=persona)
    assert await _prompt(config, None, "hi", as_json=True, generator=FakeGenerator()) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["persona"] == persona
    assert expected in data["messages"][0]["content"]
    assert await _prompt(config, None, "hi", as_json=False, generator=FakeGenerator()) == 0
    captured = capsys.readouterr()
    assert f"persona {persona}," in captured.err
    assert expected in captured.out


async def test_the_console_labels_replies_with_the_persona_answering(
    history: SqlHistoryStore,
) -> None:
    core = build_core(make_config(), history, FakeGenerator())
    out = io.StringIO()
    console = ConsoleAdapter(
        channel="main", user_name="me", assistant_name="Beseda", stdin=io.StringIO(),
        stdout=out, stderr=io.StringIO(), interactive=True, speaker=core.window.speaker,
    )  # fmt: skip
    await (await core.submit(console.inbound("hello"), console))
    assert "Beseda> echo: hello" in out.getvalue()
    await (await core.submit(console.inbound("!persona pirate"), console))
    await (await core.submit(console.inbound("ahoy"), console))
    assert "\nHook> echo: " in out.getvalue()  # not the configured [persona] name


def named_cards(**personas: Any) -> Config:
    cards = {
        "pirate": PIRATE,
        "vasilisa": PersonaCard(name="Vasilisa"),
        "captain": PersonaCard(name="Captain Hook"),
        "twin-a": PersonaCard(name="Twin"),
        "twin-b": PersonaCard(name="twin"),
    }
    return make_config(**{**personas, "cards": cards})


async def test_a_persona_is_found_by_id_or_display_name_in_any_case(
    history: SqlHistoryStore,
) -> None:
    core = build_core(named_cards(), history, FakeGenerator())
    adapter = RecordingAdapter()

    async def switch(name: str) -> str:
        return await ask(core, adapter, message(f"!persona {name}", admin=True))

    assert await switch("Vasilisa") == "Persona here is now vasilisa (Vasilisa)."
    assert await switch("VASILISA") == "Persona here is now vasilisa (Vasilisa)."
    assert await switch("PIRATE") == "Persona here is now pirate (Hook)."
    assert await switch("hook") == "Persona here is now pirate (Hook)."
    assert await switch("captain hook") == "Persona here is now captain (Captain Hook)."
    # Unicode case folding: the built-in card named "Беседа". A persona's name says nothing
    # about the language; once the Russian persona speaks, Beseda's words are Russian.
    assert await switch("БЕСЕДА") == "Persona here is now beseda-ru (Беседа)."
    assert await switch("беседа") == "Теперь здесь персона beseda-ru (Беседа)."
    assert (await history.channel_state("discord:100")).persona == "beseda-ru"  # the id
    ambiguous = await switch("TWIN")
    assert "ambiguous" in ambiguous
    assert "twin-a (Twin)" in ambiguous
    assert "twin-b (twin)" in ambiguous
    assert (await history.channel_state("discord:100")).persona == "beseda-ru"  # unchanged


async def test_config_assigns_personas_by_display_name(history: SqlHistoryStore) -> None:
    config = named_cards(default="беседа", channels={"discord:1": "VASILISA"})
    personas = Personas(config, load_registry(config), history, FakeGenerator())
    assert (await personas.choose(Place("discord:1"))).entry.id == "vasilisa"
    assert (await personas.choose(Place("discord:2"))).entry.id == "beseda-ru"
    with pytest.raises(PersonaError, match=r"channels.discord:1: persona name 'Twin' is ambig"):
        build_core(named_cards(channels={"discord:1": "Twin"}), history, FakeGenerator())
