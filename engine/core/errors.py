"""Error hierarchy. Messages carry ids and field names, never patient data."""


class RadbridgeError(Exception):
    """Base of every error the engine raises on purpose."""


class RetryableError(RadbridgeError):
    """A transient failure (peer down, timeout, lock): the same work may succeed later."""


class PermanentError(RadbridgeError):
    """Retrying will not help (bad content, refused by peer): dead-letter it."""


class ConfigError(PermanentError):
    """Configuration is invalid; carries positioned diagnostics when known."""


class IntegrityError(PermanentError):
    """Stored data failed an integrity check (decryption, hash chain, signature)."""


class KeyMaterialError(PermanentError):
    """A key is missing, unreadable, badly protected or retired."""
