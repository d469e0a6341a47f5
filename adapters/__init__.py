"""Platform adapters: Discord, Matrix and the console, each turning platform events into
``agent.events.Inbound`` and rendering replies through ``agent.ports.ReplyStream``.

The shared kit lives beside them: split.py (long replies), quotes.py (reply chains),
attachments.py (documents sent in a chat). registry.py picks the configured platforms.
"""
