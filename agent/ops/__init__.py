"""Operations: structured logs, Prometheus metrics, the observer that feeds them, and the
/healthz and /metrics server."""
