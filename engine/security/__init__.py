"""Security: keyring, envelope encryption (vault), blind indexes. Imports only core and config."""
