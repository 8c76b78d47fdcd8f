"""The audit key: what turns the audit chain's hashes into HMACs nobody without the key can recompute.

Read from the environment, never stored in the warehouse, the registry or MLflow: ``MLPLATFORM_AUDIT_KEY`` (the key
itself) or ``MLPLATFORM_AUDIT_KEY_FILE`` (a file holding it, e.g. a mounted secret). Without either the chain is
hashed as before (plain SHA-256) and ``mlplatform audit --verify`` says so. What the stores keep is the key's id
(:attr:`AuditKey.key_id`, a hash of the key), so a verifier can tell "written with another key" from "forged".
No import of the audit modules here: they import this one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

AUDIT_KEY_ENV = "MLPLATFORM_AUDIT_KEY"
AUDIT_KEY_FILE_ENV = "MLPLATFORM_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 16
UNKEYED_SCHEME = "sha256"
"""The ``hash_scheme`` of an event hashed without a key (events written before ``hash_scheme`` existed hold NULL:
the same hash, over their fields without the scheme)."""
KEYED_SCHEME_PREFIX = "hmac-sha256:"
"""A keyed event's ``hash_scheme`` is this prefix and the key id."""


class AuditKeyError(ValueError):
    """The configured audit key cannot be used: which setting, what is wrong, what to do."""


@dataclass(frozen=True)
class AuditKey:
    """A secret for HMAC-SHA256; ``repr`` never shows it."""

    secret: bytes

    def __repr__(self) -> str:
        return f"AuditKey(id={self.key_id})"

    @property
    def key_id(self) -> str:
        """16 hex digits naming the key (a hash of it, not the key): stored beside what it signed."""
        return hashlib.sha256(b"mlplatform audit key id\0" + self.secret).hexdigest()[:16]

    @property
    def scheme(self) -> str:
        return KEYED_SCHEME_PREFIX + self.key_id

    def mac(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def check(self, text: str, mac: str) -> bool:
        return hmac.compare_digest(self.mac(text), str(mac))


def configured_key() -> AuditKey | None:
    """The key this process is configured with, or None (unkeyed). :class:`AuditKeyError` for a key that is set but
    unusable (a missing or empty file, a key shorter than 16 bytes): a typo must not silently turn keying off."""
    text = os.environ.get(AUDIT_KEY_ENV, "")
    source = AUDIT_KEY_ENV
    path_text = os.environ.get(AUDIT_KEY_FILE_ENV, "").strip()
    if text.strip() and path_text:
        raise AuditKeyError(f"both {AUDIT_KEY_ENV} and {AUDIT_KEY_FILE_ENV} are set: set one of them")
    if path_text:
        path = Path(path_text).expanduser()
        source = f"{AUDIT_KEY_FILE_ENV}={path}"
        try:
            text = path.read_text()
        except OSError as error:
            raise AuditKeyError(f"{source}: cannot read the audit key file ({error.strerror}); point "
                                f"{AUDIT_KEY_FILE_ENV} at a readable file holding the key, or unset it") from None
    secret = text.strip().encode()
    if not secret:
        if path_text:
            raise AuditKeyError(f"{source}: the audit key file is empty; write the key into it (e.g. `openssl rand "
                                "-hex 32`)")
        return None
    if len(secret) < MIN_KEY_BYTES:
        raise AuditKeyError(f"{source}: the audit key has {len(secret)} bytes; use at least {MIN_KEY_BYTES} "
                            "(e.g. `openssl rand -hex 32`)")
    return AuditKey(secret)
