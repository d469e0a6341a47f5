"""Which form of speaker attribution lets the bundled model tell who said what?

    python bench/speaker_form.py [--runs 2]

Small group conversations (two or three people state something, then one of them asks
about another's statement) are put to the bundled SmolLM2-135M at temperature 0 in four
forms, and the answer is checked for the right fact (and against the other speakers'):

- ``none``: the user turns as they are (Beseda before speaker names);
- ``prefix``: ``Alice: text`` inside the user turn;
- ``field``: the chat template's ``name`` field, with the model's own template. SmolLM2's
  template does not render ``name``: the prompt is byte-identical to ``none`` (checked for
  every trial), so its figures are those of ``none``;
- ``field_chatml``: a ChatML template that renders it as OpenAI's ChatML spec did,
  ``<|im_start|>user name=Alice``.

Each trial runs with two system prompts, and with the people's turns either back to back
(as ambient messages are) or each followed by the model's own reply in that form (as
when every message is addressed). ``label_echo`` is the share of answers that begin with a
``Name:`` label of their own (the model imitating the format; not counted against the
answer). ``--runs`` repeats everything, each run in a fresh
model, to show the figures are reproducible. Prints ``correct_<form>=k/n`` and
``accuracy_<form>=x`` lines.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import PersonaConfig
from agent.generators.gguf import bundled_model_path

CHATML_WITH_NAME = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] }}"
    "{% if message.get('name') %}{{ ' name=' + message['name'] }}{% endif %}"
    "{{ '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEMS = {
    "beseda": PersonaConfig().system_prompt,
    "group": "You are Beseda, an assistant in a group chat. Several people write here.",
}
# A hint some deployments add to the system prompt with the prefix form.
HINT = " Each message from a person starts with their name and a colon."


@dataclass(frozen=True)
class Trial:
    said: tuple[tuple[str, str], ...]  # (speaker, text), then the question's asker
    asker: str
    question: str
    right: str
    wrong: tuple[str, ...]


TRIALS = (
    Trial(
        (("Alice", "My favourite colour is green."), ("Bob", "Mine is red.")),
        "Alice", "What is Bob's favourite colour?", "red", ("green",),
    ),
    Trial(
        (("Alice", "My favourite colour is green."), ("Bob", "Mine is red.")),
        "Bob", "What is Alice's favourite colour?", "green", ("red",),
    ),
    Trial(
        (("Alice", "I have a dog."), ("Bob", "I have a cat.")),
        "Carol", "Which pet does Bob have?", "cat", ("dog",),
    ),
    Trial(
        (("Alice", "I live in Paris."), ("Bob", "I live in Berlin.")),
        "Alice", "Where does Bob live?", "berlin", ("paris",),
    ),
    Trial(
        (("Alice", "I live in Paris."), ("Bob", "I live in Berlin.")),
        "Bob", "Where does Alice live?", "paris", ("berlin",),
    ),
    Trial(
        (("Alice", "I drink coffee every morning."), ("Bob", "I only drink tea.")),
        "Carol", "Who drinks tea?", "bob", ("alice",),
    ),
    Trial(
        (("Dmitri", "I play the violin."), ("Alice", "I play the piano."),
         ("Bob", "I play the drums.")),
        "Bob", "What instrument does Dmitri play?", "violin", ("piano", "drum"),
    ),
    Trial(
        (("Alice", "My cat is called Tom."), ("Bob", "My cat is called Felix.")),
        "Carol", "What is Alice's cat called?", "tom", ("felix",),
    ),
    Trial(
        (("Alice", "I am a doctor."), ("Bob", "I am a pilot.")),
        "Alice", "What is Bob's job?", "pilot", ("doctor",),
    ),
    Trial(
        (("Bob", "I was born in 1990."), ("Alice", "I was born in 1985.")),
        "Carol", "When was Bob born?", "1990", ("1985",),
    ),
    Trial(
        (("Alice", "I like football."), ("Bob", "I like chess."), ("Carol", "I like tennis.")),
        "Alice", "Which game does Carol like?", "tennis", ("football", "chess"),
    ),
    Trial(
        (("Alice", "My brother is Sam."), ("Bob", "My brother is Max.")),
        "Bob", "What is Alice's brother called?", "sam", ("max",),
    ),
)  # fmt: skip


FORMS = ("none", "prefix", "prefix_hint", "field", "field_chatml")
LABEL = re.compile(r"^\s*[\w .'-]{1,32}:\s*")


def turn(form: str, speaker: str, text: str) -> dict[str, Any]:
    if form.startswith("prefix"):
        return {"role": "user", "content": f"{speaker}: {text}"}
    if form.startswith("field"):
        return {"role": "user", "content": text, "name": speaker}
    return {"role": "user", "content": text}


def verdict(trial: Trial, answer: str) -> bool:
    """The right fact and none of the others' (a leading "Name:" is not held against it)."""
    lower = LABEL.sub("", answer).lower()
    return trial.right in lower and not any(w in lower for w in trial.wrong)


class Model:
    def __init__(self) -> None:
        from llama_cpp import Llama  # noqa: PLC0415
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

        path = str(bundled_model_path())
        self.llama = Llama(model_path=path, n_ctx=1024, n_threads=1, verbose=False)
        own = self.llama.metadata["tokenizer.chat_template"]
        self.eos = self.llama._model.token_get_text(self.llama.token_eos())  # noqa: SLF001
        bos = self.llama._model.token_get_text(self.llama.token_bos())  # noqa: SLF001
        self.templates = {
            form: Jinja2ChatFormatter(
                template=CHATML_WITH_NAME if form == "field_chatml" else own,
                eos_token=self.eos, bos_token=bos,
            )
            for form in FORMS
        }  # fmt: skip

    def render(self, form: str, messages: list[dict[str, Any]]) -> str:
        return str(self.templates[form](messages=messages).prompt)

    def answer(self, form: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
        prompt = self.render(form, messages)
        tokens = self.llama.tokenize(prompt.encode(), add_bos=False, special=True)
        out = self.llama.create_completion(
            prompt=tokens, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.1,
            stop=[self.eos],
        )  # fmt: skip
        return str(out["choices"][0]["text"]).strip()


def run_once(show: bool) -> dict[str, list[tuple[bool, bool]]]:
    """Per form: (right answer, answer began with a "Name:" label) for every trial."""
    model = Model()
    results: dict[str, list[tuple[bool, bool]]] = {form: [] for form in FORMS}
    for form in FORMS:
        if form == "field":  # the bundled template renders no name: the "none" prompts
            continue
        for base_system in SYSTEMS.values():
            system = base_system + HINT if form == "prefix_hint" else base_system
            for replies in (False, True):
                for trial in TRIALS:
                    chat: list[dict[str, Any]] = [{"role": "system", "content": system}]
                    for speaker, text in trial.said:
                        chat.append(turn(form, speaker, text))
                        if replies:  # every message addressed: the model answered each
                            reply = model.answer(form, chat, 24)
                            chat.append({"role": "assistant", "content": reply or "OK."})
                    chat.append(turn(form, trial.asker, trial.question))
                    if form == "none":  # the same turns with a name field render the same
                        fields = [m | {"name": "Alice"} if m["role"] == "user" else m for m in chat]
                        assert model.render("field", fields) == model.render("none", chat)
                    answer = model.answer(form, chat, 32)
                    ok, labelled = verdict(trial, answer), bool(LABEL.match(answer))
                    results[form].append((ok, labelled))
                    if show:
                        mark = "ok " if ok else "BAD"
                        mode = "replies" if replies else "ambient"
                        print(f"# {form:12} {mode:7} {mark} {trial.question!r} -> {answer[:60]!r}")
    model.llama.close()
    results["field"] = results["none"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()
    runs = [run_once(args.show and i == 0) for i in range(args.runs)]
    same = all(r == runs[0] for r in runs)
    for form, outcomes in runs[0].items():
        right = sum(ok for ok, _ in outcomes)
        half = len(outcomes) // 2  # the first half: back to back, the second: with replies
        ambient = sum(ok for ok, _ in outcomes[: len(TRIALS)]) + sum(
            ok for ok, _ in outcomes[2 * len(TRIALS) : 3 * len(TRIALS)]
        )
        print(f"correct_{form}={right}/{len(outcomes)}")
        print(f"accuracy_{form}={right / len(outcomes):.3f}")
        print(f"accuracy_{form}_back_to_back={ambient / half:.3f}")
        print(f"accuracy_{form}_with_replies={(right - ambient) / half:.3f}")
        print(f"label_echo_{form}={sum(lab for _, lab in outcomes) / len(outcomes):.3f}")
    print(f"runs={args.runs}")
    print(f"runs_identical={str(same).lower()}")


if __name__ == "__main__":
    main()
