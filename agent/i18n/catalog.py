"""Every sentence Beseda writes itself, in English and Russian (see agent/i18n/__init__.py).

Names say where a text is used. Keep both languages' placeholders the same: a test checks
it, and that no Russian text is left in English.
"""

from __future__ import annotations

from agent.i18n import Plural, Text

# -- notices of the core (agent/runtime/core.py) -----------------------------------------------

FAILED = Text(
    en="Sorry, I could not answer that: {reason}",
    ru="Извините, не получилось ответить: {reason}",
)
REPLY_NOT_STORED = Text(
    en="the reply could not be stored",
    ru="ответ не удалось сохранить",
)
SHUTDOWN = Text(
    en="(stopped: Beseda is shutting down)",
    ru="(остановлено: Беседа завершает работу)",
)
EMPTY = Text(
    en="Sorry, the model returned an empty reply.",
    ru="Извините, модель вернула пустой ответ.",
)
CUT = Text(
    en="(Your message was longer than {limit} characters: I read only the first {limit}.)",
    ru="(Ваше сообщение длиннее {limit} символов: я прочитала только первые {limit}.)",
)
BUSY = Text(
    en="I'm busy with earlier messages in this channel, so I'll leave the newer ones "
    "unanswered for now. Please ask again in a moment.",
    ru="Я ещё отвечаю на прежние сообщения в этом канале, поэтому новые пока оставлю без "
    "ответа. Спросите, пожалуйста, ещё раз чуть позже.",
)
RATE = Text(
    en="You're writing faster than I can answer: I'll leave your messages unanswered for a "
    "little while. Please wait a moment.",
    ru="Вы пишете быстрее, чем я успеваю отвечать: ненадолго оставлю ваши сообщения без "
    "ответа. Подождите, пожалуйста, немного.",
)
CHANNEL_RATE = Text(
    en="This channel is writing faster than I can answer: I'll leave some messages "
    "unanswered for a little while.",
    ru="В этом канале пишут быстрее, чем я успеваю отвечать: ненадолго оставлю часть "
    "сообщений без ответа.",
)
NOTHING = Text(
    en="There is nothing in your message for me to answer: please write your question as text.",
    ru="В вашем сообщении нечего отвечать: напишите, пожалуйста, вопрос текстом.",
)
STORAGE = Text(
    en="Sorry, I can't take messages right now: {reason}. Please try again later.",
    ru="Извините, сейчас я не могу принимать сообщения: {reason}. Попробуйте, пожалуйста, позже.",
)
STOPPED_MARK = Text(en="(stopped)", ru="(остановлено)")
STOPPED = Text(en="Stopped.", ru="Остановлено.")
NOTHING_TO_STOP = Text(
    en="Nothing to stop: I am not writing a reply here.",
    ru="Нечего останавливать: я сейчас ничего здесь не пишу.",
)

# -- the intake decision of the adapters (adapters/intake.py) ----------------------------------

INTAKE_RATE = Text(
    en="You're writing faster than I can answer well — I'll skip your messages for a little "
    "while. Please wait a moment before the next one.",
    ru="Вы пишете быстрее, чем я успеваю хорошо отвечать, — ненадолго пропущу ваши сообщения. "
    "Подождите, пожалуйста, немного перед следующим.",
)
NOT_ALLOWED = Text(
    en="Sorry, I am not allowed to answer you here.",
    ru="Извините, здесь мне не разрешено вам отвечать.",
)

# -- documents sent to a channel (adapters/attachments.py) --------------------------------------

ATTACHMENT_INDEXED = Plural(
    en=(
        "Indexed {name} for this channel ({count} chunk).",
        "Indexed {name} for this channel ({count} chunks).",
    ),
    ru=(
        "Добавила {name} в документы этого канала ({count} фрагмент).",
        "Добавила {name} в документы этого канала ({count} фрагмента).",
        "Добавила {name} в документы этого канала ({count} фрагментов).",
    ),
)
ATTACHMENT_UNCHANGED = Text(
    en="{name} is among this channel's documents already, unchanged.",
    ru="{name} уже есть в документах этого канала, без изменений.",
)
ATTACHMENT_EMPTY = Text(
    en="There is no text in {name} for me to index.",
    ru="В {name} нет текста, который я могла бы добавить.",
)
ATTACHMENT_TOO_LARGE = Text(
    en="{name} is too large for me to index (the limit is {limit} MB).",
    ru="{name} слишком большой, я не могу его добавить (предел — {limit} МБ).",
)
ATTACHMENT_FAILED = Text(
    en="I could not index {name}.",
    ru="Не получилось добавить {name} в документы.",
)
ATTACHMENT_UNREADABLE = Text(
    en="I could not read {name}: {reason}.",
    ru="Не получилось прочитать {name}: {reason}.",
)
# The reasons, by UnreadableDocumentError.kind (memory/documents.py).
UNREADABLE_BINARY = Text(en="it is not text", ru="это не текст")
UNREADABLE_PASSWORD = Text(
    en="it is protected by a password; please send a copy without one",
    ru="он защищён паролем; пришлите, пожалуйста, копию без пароля",
)
UNREADABLE_SCANNED = Text(
    en="it has no text layer (a scan?)",
    ru="в нём нет текстового слоя (это скан?)",
)
UNREADABLE_PDF = Text(en="it is not a readable PDF", ru="это не читаемый PDF")
UNREADABLE_SLOW = Text(
    en="reading it took too long (a damaged PDF?)",
    ru="его чтение заняло слишком много времени (PDF повреждён?)",
)

# -- the sources line under answers (agent/prompt/citations.py) --------------------------------

SOURCES = Text(en="Sources:", ru="Источники:")

# -- chat commands (agent/runtime/chat_commands.py): help --------------------------------------

HELP_HEADING = Text(en="Commands:", ru="Команды:")
HELP_HELP = Text(en="list the commands", ru="список команд")
HELP_RESET = Text(
    en="start this channel afresh (history is kept)",
    ru="начать разговор здесь заново (история сохраняется)",
)
HELP_SUMMARY = Text(
    en="show the summary of what fell out of context",
    ru="показать краткое содержание того, что вышло за пределы контекста",
)
HELP_REMEMBER = Text(en="remember a fact in this channel", ru="запомнить факт в этом канале")
HELP_ABOUTME = Text(
    en="remember a fact about you, in every channel where you talk to me",
    ru="запомнить факт о вас — во всех каналах, где вы со мной говорите",
)
HELP_FORGET = Text(
    en="forget the closest fact remembered here or about you, and your background messages "
    "here that contain the text",
    ru="забыть самый близкий запомненный здесь или о вас факт, а также ваши фоновые сообщения "
    "здесь, в которых есть этот текст",
)
HELP_FORGETME = Text(
    en="erase every message you wrote here without addressing me, so I no longer see it",
    ru="стереть все ваши сообщения здесь, написанные не мне, чтобы я их больше не видела",
)
HELP_MEMORIES = Text(en="list what I remember here", ru="что я помню в этом канале")
HELP_PERSONA = Text(
    en="show the persona here; admins: switch to NAME",
    ru="показать персону этого канала; админы: сменить на указанную",
)
HELP_PERSONAS = Text(en="list the personas", ru="список персон")
HELP_STOP = Text(
    en="stop the reply I am writing in this channel",
    ru="остановить ответ, который я пишу в этом канале",
)
# Placeholders in usage lines ("!remember <text>").
ARG_TEXT = Text(en="text", ru="текст")
ARG_FACT = Text(en="a fact about you", ru="факт о вас")
ARG_NAME = Text(en="name", ru="имя")
# The description of a slash command's text option (Discord).
OPTION_TEXT = Text(en="what the command applies to", ru="к чему применить команду")

# -- chat commands: answers ----------------------------------------------------------------------

RESET_DONE = Text(
    en="Starting afresh: I no longer see the earlier messages of this channel (they stay stored).",
    ru="Начинаем заново: прежних сообщений этого канала я больше не вижу (они сохранены).",
)
NO_SUMMARY = Text(
    en="No summary yet: the whole conversation still fits in my context window.",
    ru="Краткого содержания пока нет: весь разговор ещё помещается в моё окно контекста.",
)
SUMMARY_HEADING = Text(
    en="Summary of the earlier conversation:",
    ru="Краткое содержание прежнего разговора:",
)
NOTHING_TO_STOP_SHORT = Text(en="Nothing to stop.", ru="Нечего останавливать.")
NO_MEMORY = Text(
    en="Long-term memory is not available (no vector store is configured).",
    ru="Долговременная память недоступна (хранилище векторов не настроено).",
)
USAGE = Text(en="Usage: {usage}", ru="Как использовать: {usage}")
REMEMBERED = Text(en="I will remember: {text}", ru="Запомню: {text}")
WHO_ARE_YOU = Text(
    en="I cannot tell who you are here, so I cannot remember this about you.",
    ru="Здесь я не могу понять, кто вы, поэтому не могу запомнить это о вас.",
)
REMEMBERED_ABOUT_YOU = Text(
    en="I will remember about you, wherever you talk to me on {platform}: {text}",
    ru="Запомню о вас — везде, где вы говорите со мной в {platform}: {text}",
)
FORGOTTEN = Text(en="Forgotten:", ru="Забыто:")
NOTHING_LIKE_THAT = Text(
    en="I remember nothing like that here.",
    ru="Ничего похожего я здесь не помню.",
)
WHO_ARE_YOU_MESSAGES = Text(
    en="I cannot tell who you are here, so I cannot tell your messages apart.",
    ru="Здесь я не могу понять, кто вы, поэтому не могу отличить ваши сообщения.",
)
NO_BACKGROUND = Text(
    en="I keep none of your messages here as background.",
    ru="Ваших фоновых сообщений здесь у меня нет.",
)
WITHDRAWN = Plural(
    en=(
        "I no longer see {count} of your messages written here without addressing me "
        "(its text is erased).",
        "I no longer see {count} of your messages written here without addressing me "
        "(their text is erased).",
    ),
    ru=(
        "Я больше не вижу {count} ваше сообщение, написанное здесь не мне (его текст стёрт).",
        "Я больше не вижу {count} ваших сообщения, написанных здесь не мне (их текст стёрт).",
        "Я больше не вижу {count} ваших сообщений, написанных здесь не мне (их текст стёрт).",
    ),
)
NO_MEMORIES = Text(
    en="I remember nothing here yet. Teach me with {command}.",
    ru="Здесь я пока ничего не помню. Научите меня командой {command}.",
)
MEMORIES_HEADING = Text(en="What I remember here:", ru="Что я помню здесь:")
NO_PERSONAS = Text(
    en="Personas are not available here.",
    ru="Персоны здесь недоступны.",
)
PERSONA_HERE = Text(
    en="Persona here: {id} ({name}), {reason}.",
    ru="Персона здесь: {id} ({name}), {reason}.",
)
ADMINS_ONLY = Text(
    en="Only admins can switch the persona.",
    ru="Сменить персону могут только админы.",
)
CANNOT_SWITCH = Text(en="Cannot switch: {problem}.", ru="Не могу сменить: {problem}.")
PERSONA_RESET = Text(
    en="Persona here is back to the configured one: {id} ({name}).",
    ru="Здесь снова персона из настроек: {id} ({name}).",
)
PERSONA_NOW = Text(
    en="Persona here is now {id} ({name}).", ru="Теперь здесь персона {id} ({name})."
)
PERSONAS_HEADING = Text(en="Personas:", ru="Персоны:")
PERSONA_MARK_HERE = Text(en="(here)", ru="(здесь)")
# Why a persona speaks in a channel (agent/prompt/personas.py, Choice).
WHY_CHOSEN_HERE = Text(
    en="chosen for this channel with !persona",
    ru="выбрана для этого канала командой !persona",
)
WHY_CHOSEN_PARENT = Text(
    en="chosen for its parent channel with !persona",
    ru="выбрана для родительского канала командой !persona",
)
WHY_CONFIGURED = Text(en="{key}", ru="так задано в config.toml: {key}")
WHY_DEFAULT = Text(en="the default persona", ru="персона по умолчанию")

# -- the console (adapters/console.py) -----------------------------------------------------------

RUSSIAN_MODEL_HINT = Text(
    en="hint: the bundled model does not speak Russian; for one that does, run "
    '`{command}` and set [model] name = "{model}" in config.toml',
    ru="подсказка: встроенная модель не говорит по-русски; чтобы получить русскоязычную, "
    'выполните `{command}` и укажите [model] name = "{model}" в config.toml',
)
