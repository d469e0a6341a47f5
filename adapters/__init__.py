"""Platform adapters: Discord, Matrix, Telegram and the console, each turning platform
events into ``agent.events.Inbound`` and rendering replies through
``agent.ports.ReplyStream``.

The shared kit lives beside them: streaming.py (edited replies over a per-platform
surface), intake.py (the pure "answer this?" decision), split.py (long replies), quotes.py
(reply chains), attachments.py (documents sent in a chat), credentials.py (tokens from the
config, the environment or .env). registry.py picks the configured platforms.
"""
