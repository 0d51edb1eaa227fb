"""Credentials for model servers: a static bearer token, or OAuth2 client credentials. The one
implementation lives in engine.security.oauth2 (shared with the FHIR destination); this name stays
so model clients keep importing it from their own package."""

from __future__ import annotations

from engine.security.oauth2 import DEFAULT_LIFETIME_S, TokenSource

__all__ = ["DEFAULT_LIFETIME_S", "TokenSource"]
