"""Core: ids, clock, errors, component registry. Imports nothing above it."""
