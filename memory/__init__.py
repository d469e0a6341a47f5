"""History store, and later embeddings, vector store, documents and long-term memories."""
