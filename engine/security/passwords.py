"""Passwords: the policy a new password must meet, and argon2id hashing (argon2-cffi).

The hash is a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) that carries its own
parameters, so raising them later only means rehashing at the next successful login. An unknown
user's login still runs one verify against a dummy hash, so its timing does not say the name is free.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from engine.config.auth import PasswordPolicy
from engine.core.errors import PermanentError

# A small list of the passwords tried first by every guessing tool; compared with trailing digits and
# punctuation stripped, so "Password123!" counts as "password". Not a breach corpus: length and
# character classes do the heavy lifting, and lockout bounds online guessing.
COMMON = frozenset(
    """
    password passw0rd p@ssw0rd passwort motdepasse contrasena qwerty qwertyuiop asdfghjkl zxcvbnm azerty
    letmein welcome welcome1 admin administrator root changeme default secret iloveyou monkey dragon
    football baseball basketball soccer sunshine princess shadow master superman batman trustno1 starwars
    whatever freedom hello hunter abc abcdef abcdefgh abcdefghijkl login access radiology hospital
    radbridge mirth healthcare nurse doctor summer winter spring autumn january
    """.split()
)
PROBLEMS = {
    "too_short": "shorter than the minimum length",
    "too_long": "longer than the maximum length",
    "contains_username": "contains the username",
    "common": "is a commonly used password",
    "too_few_classes": "needs more kinds of characters (lower case, upper case, digits, symbols) or more length",
}


class PasswordRejected(PermanentError):
    """A new password breaks the policy; `problems` lists the codes (PROBLEMS), never the password."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("password rejected: " + "; ".join(PROBLEMS[p] for p in problems))
        self.problems = problems


def _classes(password: str) -> int:
    kinds = (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    return sum(any(kind(c) for c in password) for kind in kinds)


def problems(password: str, username: str, policy: PasswordPolicy | None = None) -> list[str]:
    """The policy codes a candidate password breaks (empty when it is acceptable)."""
    policy = policy or PasswordPolicy()
    found = []
    if len(password) < policy.min_length:
        found.append("too_short")
    if len(password) > policy.max_length:
        found.append("too_long")
    if len(username) >= 3 and username.lower() in password.lower():
        found.append("contains_username")
    core = password.lower().strip("0123456789!@#$%^&*()-_=+.,;:?~ ")
    if password.lower() in COMMON or core in COMMON:
        found.append("common")
    if len(password) < policy.passphrase_length and _classes(password) < policy.min_classes:
        found.append("too_few_classes")
    return found


def check(password: str, username: str, policy: PasswordPolicy | None = None) -> None:
    found = problems(password, username, policy)
    if found:
        raise PasswordRejected(found)


class Passwords:
    """argon2id hashing with argon2-cffi's defaults (RFC 9106's second recommendation: t=3, 64 MiB, p=4)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        try:
            return self.hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """True when the stored hash was made with other parameters than the hasher's (rehash it)."""
        try:
            return self.hasher.check_needs_rehash(hashed)
        except InvalidHashError:
            return True

    def dummy_verify(self, password: str) -> None:
        """Spend the time of one verify, for a login whose user does not exist (or may not log in)."""
        if self._dummy is None:
            self._dummy = self.hasher.hash("radbridge dummy password for timing")
        self.verify(self._dummy, password)
