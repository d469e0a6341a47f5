"""Persona cards: the TOML format, SillyTavern import, the registry and prompt rendering.

The built-in cards (``*.toml`` here) ship with the package; see README, "Personas".
"""
