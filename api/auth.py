"""API keys: who may call what.

`TASKQ_API_KEYS` holds comma-separated `scope:secret` entries. Scopes nest: `read` (GET
routes and the stream) < `submit` (plus submitting and cancelling jobs) < `admin`
(everything: dead letters, pause and resume). Only the SHA-256 of each secret is kept in
memory, and a presented key is compared with every stored digest in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass


class Scope(enum.IntEnum):
    """What a key may do; a higher scope includes every lower one."""

    READ = 1
    SUBMIT = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class ApiKey:
    """An accepted key: its scope and a fingerprint safe to log (never the secret)."""

    scope: Scope
    fingerprint: str

    def allows(self, needed: Scope) -> bool:
        return self.scope >= needed


class InvalidKeyConfig(ValueError):
    """TASKQ_API_KEYS is malformed. The message never contains a secret."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """The configured keys, as (SHA-256 digest, scope) pairs."""

    entries: tuple[tuple[bytes, Scope], ...] = ()

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Parse `scope:secret[,scope:secret...]`; blank entries are ignored."""
        entries: list[tuple[bytes, Scope]] = []
        for position, raw in enumerate(text.split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            label, sep, secret = entry.partition(":")
            if not sep or not secret.strip():
                raise InvalidKeyConfig(
                    f"TASKQ_API_KEYS entry {position} is not `scope:secret` "
                    "(scopes: read, submit, admin)"
                )
            try:
                scope = Scope[label.strip().upper()]
            except KeyError:
                raise InvalidKeyConfig(
                    f"TASKQ_API_KEYS entry {position} has an unknown scope "
                    "(scopes: read, submit, admin)"
                ) from None
            entries.append((_digest(secret.strip()), scope))
        digests = [digest for digest, _ in entries]
        if len(set(digests)) != len(digests):
            raise InvalidKeyConfig("TASKQ_API_KEYS names the same secret twice")
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def identify(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None. Compares against every stored digest,
        so the time taken does not tell which key (or how much of one) matched."""
        presented = _digest(secret)
        found: Scope | None = None
        for digest, scope in self.entries:
            if hmac.compare_digest(presented, digest):
                found = scope
        if found is None:
            return None
        return ApiKey(scope=found, fingerprint=presented.hex()[:8])


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
