"""Building the prompt: the context builder and its window (eviction, summaries), personas
at run time, retrieval of memories and documents, citations and memory extraction."""
