"""What Beseda remembers: the history store (SQLAlchemy), its records and caches, the vector
store (Chroma), embeddings, documents, long-term memories, and the schema migrations."""
