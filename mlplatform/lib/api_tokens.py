"""Bearer tokens of the serving API: which team's models a token may score, and who may read ``/metrics``.

Tokens live in a secrets file the platform's deployment names with ``MLPLATFORM_API_TOKENS_FILE`` (never in a
spec: a team that edits its spec must not grant itself another team's models). YAML or JSON::

    tokens:
      "sha256:9f86d081884c7d65...": [fraud, ads]   # the SHA-256 of the token (`mlplatform token-digest`)
      "sha256:60303ae22b998861...": "*"            # every team's models
      "a-plain-token-of-16+-chars": fraud          # accepted, but a leaked file then leaks the token itself
    metrics:                                       # optional: tokens for GET /metrics (else it stays open)
      - "sha256:fcde2b2edba56bf4..."

A presented token is hashed and compared with every stored digest in constant time (:func:`hmac.compare_digest`,
no early exit), so neither the answer's timing nor a leaked file of digests gives a token away.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOKENS_ENV = "MLPLATFORM_API_TOKENS_FILE"
CLIENT_TOKEN_ENV = "MLPLATFORM_API_TOKEN"
"""The token the platform's own client (``mlplatform replay``) sends to a service with tokens."""
DIGEST_PREFIX = "sha256:"
ALL_TEAMS = "*"
MIN_PLAIN_TOKEN_CHARS = 16
TEAM_OWNER_PREFIX = "team:"


class TokenFileError(ValueError):
    """The tokens file is wrong: (file, key, message), said like a spec problem."""

    def __init__(self, file: Path, key: str, message: str):
        super().__init__(f"{file}: {key}: {message}")
        self.file, self.key, self.message = file, key, message


def token_digest(token: str) -> str:
    """What the tokens file stores for ``token``: ``sha256:`` and the hex digest of its UTF-8 bytes."""
    return DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenGrant:
    digest: bytes  # SHA-256 of the token
    teams: frozenset[str]  # the teams whose models it may score; ALL_TEAMS: every team's


@dataclass(frozen=True)
class ApiTokens:
    """The configured tokens; :meth:`teams_for` and :meth:`may_read_metrics` answer for a presented token."""

    grants: tuple[TokenGrant, ...]
    metrics: tuple[bytes, ...] = ()
    source: str = ""

    @property
    def metrics_protected(self) -> bool:
        return bool(self.metrics)

    def teams_for(self, token: str | None) -> frozenset[str] | None:
        """The teams ``token`` may score for; None for no or an unknown token. Every grant is compared."""
        if not token:
            return None
        presented = hashlib.sha256(token.encode()).digest()
        found: frozenset[str] | None = None
        for grant in self.grants:
            if hmac.compare_digest(grant.digest, presented) and found is None:
                found = grant.teams
        return found

    def may_read_metrics(self, token: str | None) -> bool:
        if not self.metrics:
            return True
        presented = hashlib.sha256((token or "").encode()).digest()
        allowed = False
        for digest in self.metrics:
            allowed |= hmac.compare_digest(digest, presented)
        return allowed and bool(token)


def may_score(teams: frozenset[str], team: str | None) -> bool:
    """Whether a token granted ``teams`` may score a model of ``team`` (a model of no team: only ``*``)."""
    return ALL_TEAMS in teams or (team is not None and team in teams)


def team_of(spec: Any) -> str | None:
    """The team a model belongs to: its spec's ``team`` when the spec has one, else its ``owner`` (``team:NAME``
    gives NAME)."""
    team = getattr(spec, "team", None) or getattr(spec, "owner", None)
    if not team:
        return None
    team = str(team).strip()
    return team.removeprefix(TEAM_OWNER_PREFIX).strip() or None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (scheme case-blind), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _digest_of(file: Path, key: str, entry: str) -> bytes:
    if entry.startswith(DIGEST_PREFIX):
        text = entry[len(DIGEST_PREFIX):].strip().lower()
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise TokenFileError(file, key, f"{entry[:16]}...: not a SHA-256 digest (64 hex digits after "
                                 f"'{DIGEST_PREFIX}'); `mlplatform token-digest` prints one")
        return digest
    if len(entry) < MIN_PLAIN_TOKEN_CHARS:
        raise TokenFileError(file, key, f"a token of {len(entry)} characters is too short to be a secret; give at "
                             f"least {MIN_PLAIN_TOKEN_CHARS} (or its '{DIGEST_PREFIX}' digest)")
    return hashlib.sha256(entry.encode()).digest()


def read_token_file(file: Path, setting: str) -> object:
    """A tokens file's YAML (API or approver tokens); refusals name the file and the setting that points at it."""
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise TokenFileError(file, setting, f"cannot be read: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TokenFileError(file, "(yaml)", f"not valid YAML or JSON: {error}") from None


def load_tokens(file: Path) -> ApiTokens:
    """The tokens ``file`` grants; raises :class:`TokenFileError` naming the key for anything it cannot use."""
    raw = read_token_file(file, TOKENS_ENV)
    if not isinstance(raw, dict) or set(raw) - {"tokens", "metrics"}:
        raise TokenFileError(file, "(top level)", "expected a mapping with `tokens` (token or sha256:digest -> "
                             "team, list of teams or '*') and optionally `metrics` (a list of tokens)")
    tokens = raw.get("tokens") or {}
    if not isinstance(tokens, dict) or not tokens:
        raise TokenFileError(file, "tokens", "expected a non-empty mapping of token (or sha256:digest) -> team, "
                             "list of teams or '*'")
    grants = []
    for entry, teams in tokens.items():
        key = f"tokens.{str(entry)[:16]}..."
        listed = [teams] if isinstance(teams, str) else teams
        if not isinstance(listed, list) or not listed or not all(isinstance(t, str) and t.strip() for t in listed):
            raise TokenFileError(file, key, "expected a team, a list of teams, or '*' (every team)")
        grants.append(TokenGrant(_digest_of(file, key, str(entry)), frozenset(t.strip() for t in listed)))
    metrics = raw.get("metrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise TokenFileError(file, "metrics", "expected a list of tokens (or sha256:digests) that may read /metrics")
    return ApiTokens(tuple(grants), tuple(_digest_of(file, f"metrics[{i}]", m) for i, m in enumerate(metrics)),
                     str(file))


def tokens_from_environment() -> ApiTokens | None:
    """The tokens of the file ``MLPLATFORM_API_TOKENS_FILE`` names; None when it is unset (the API is open)."""
    configured = os.environ.get(TOKENS_ENV, "").strip()
    if not configured:
        return None
    return load_tokens(Path(configured).expanduser())


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine (127.0.0.0/8, ::1, localhost)."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, tokens: ApiTokens | None) -> str | None:
    """The warning ``serve`` gives when it binds beyond loopback with no tokens, else None."""
    if tokens is not None or is_loopback(host):
        return None
    return (f"warning: serving on {host}, beyond this machine, without API tokens: anyone who reaches the port can "
            f"score every model and write rows into the prediction log (which feeds drift and the training-data "
            f"gate). Set {TOKENS_ENV} to a tokens file (docs/serving.md, Access) or bind 127.0.0.1 behind a proxy "
            "that authenticates")
