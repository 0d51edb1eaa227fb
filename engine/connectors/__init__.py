"""Connectors: one module per protocol. They meet only through topics, never import each other or the runtime."""
