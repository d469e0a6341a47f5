"""Beseda's core: configuration, lifecycle, channel workers, context, generators."""
