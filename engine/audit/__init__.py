"""Audit: the hash-chained, append-only log of every touch of PHI or configuration."""
