"""Beseda's core. Shared at the top: config, events, ports (what platforms implement), the
app (lifecycle owner) and its wiring. By concern: runtime/ (the per-channel core), prompt/
(context, window, personas, retrieval), generators/ (llama.cpp, OpenAI-compatible), ops/
(logs, metrics, health), cli/ (``python -m agent``)."""
