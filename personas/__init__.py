"""Persona cards. The persona is configured in config.toml [persona] for now."""
