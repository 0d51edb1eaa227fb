"""`auth:` in config/engine.yaml: sign-in rules, password policy, session timeouts and optional OIDC.

Pure settings; the logic lives in engine/security (passwords, sessions, users) and engine/web (sign-in).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROLES = ("admin", "integration_analyst", "radiologist", "technologist", "auditor", "service")
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PasswordPolicy(_Strict):
    """What a new password must meet. Checked when it is set, never at login."""

    min_length: int = Field(12, ge=8, le=128, description="Minimum length in characters.")
    passphrase_length: int = Field(
        16, ge=8, le=256, description="From this length on, a passphrase needs no particular kinds of characters."
    )
    min_classes: int = Field(
        3, ge=1, le=4, description="Kinds of characters (lower, upper, digit, symbol) a shorter password needs."
    )
    max_length: int = Field(1024, ge=64, le=4096, description="Longest accepted (bounds the hashing work).")


class SessionPolicy(_Strict):
    idle_minutes: int = Field(15, ge=1, le=240, description="A session unused this long ends.")
    absolute_hours: int = Field(8, ge=1, le=24, description="A session ends this long after sign-in, used or not.")
    touch_seconds: int = Field(
        60, ge=0, le=600, description="Record a session's use at most this often (one write per request is waste)."
    )


class OidcConfig(_Strict):
    """Single sign-on through an OpenID Connect provider (authorization code flow with PKCE).

    The provider proves who someone is; radbridge still decides what they may do: the claim named by
    `username_claim` must name an enabled local user, whose role applies."""

    issuer: str = Field(description="The provider's issuer URL; its /.well-known/openid-configuration is read.")
    client_id: str = Field(description="radbridge's client id at the provider.")
    client_secret_env: str | None = Field(
        None, pattern=ENV_NAME, description="Environment variable holding the client secret (confidential client)."
    )
    scopes: list[str] = Field(["openid", "profile", "email"], description="Scopes asked for; must include openid.")
    username_claim: str = Field("preferred_username", description="ID token claim holding the local username.")
    mfa_amr: list[str] = Field(
        ["mfa", "otp", "hwk", "swk"],
        description="`amr` values that count as a second factor, for roles that must sign in with one.",
    )
    ca: str | None = Field(None, description="CA bundle (PEM) to verify the provider, relative to the project root.")
    label: str = Field("Single sign-on", description="Text of the sign-in button.")

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include 'openid'")
        return value


class AuthPolicy(_Strict):
    """Sign-in rules. Field descriptions are the documentation (docs/access.md repeats the defaults)."""

    lockout_threshold: int = Field(5, ge=1, le=100, description="Failed sign-ins in a row that lock the user out.")
    lockout_minutes: int = Field(15, ge=1, le=1440, description="How long a lockout lasts.")
    totp_roles: list[str] = Field(["admin"], description="Roles that must sign in with a TOTP code.")
    token_max_days: int = Field(365, ge=1, le=3650, description="Longest lifetime of an API token.")
    password: PasswordPolicy = Field(default_factory=PasswordPolicy, description="Rules for new passwords.")
    sessions: SessionPolicy = Field(default_factory=SessionPolicy, description="Web session timeouts.")
    oidc: OidcConfig | None = Field(None, description="Optional single sign-on; local passwords keep working.")

    @field_validator("totp_roles")
    @classmethod
    def _known_roles(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s): {', '.join(unknown)}")
        return value
