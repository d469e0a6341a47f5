"""Test helpers: fakes for the core's seams and real or loopback peers for the platforms."""
