"""Who approves, proven by a token instead of typed: the approvers' credentials file.

A policy's approver list and its two-distinct-approvers rule mean little while the actor is whatever name is typed
after ``--by``: typing an approver's name passes both. With ``MLPLATFORM_APPROVER_TOKENS_FILE`` set (a secrets file
of the platform's deployment, never the spec or the policy file, which teams edit), the person is the one whose
token is presented, and the typed name is at most checked against it. The file has the API tokens' format and
digests (:mod:`mlplatform.lib.api_tokens`; ``mlplatform token-digest`` prints a digest), a person instead of teams::

    tokens:
      "sha256:9f86d081884c7d65...": ana                          # the SHA-256 of ana's token
      "sha256:60303ae22b998861...": {name: bo, groups: [risk]}   # bo, who counts as a member of approver group risk

The token itself reaches ``mlplatform promote``/``rollback`` from ``MLPLATFORM_APPROVER_TOKEN`` or a hidden prompt,
never from a command-line argument (shell history and ``ps`` keep those). Presented tokens are compared with every
stored digest in constant time, as the API's are; a refusal's audit row never carries the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from mlplatform.lib.api_tokens import TokenFileError, _digest_of, read_token_file
from mlplatform.lib.approvals import ApprovalDenied, refused_event
from mlplatform.lib.promotion import refuse_control_characters

APPROVER_TOKENS_ENV = "MLPLATFORM_APPROVER_TOKENS_FILE"
APPROVER_TOKEN_ENV = "MLPLATFORM_APPROVER_TOKEN"
"""The token of the person running ``mlplatform promote``/``rollback`` (else they are asked for it on a terminal)."""


@dataclass(frozen=True)
class Approver:
    """A person the credentials file vouches for: their name (the audit's actor) and the approver groups they are in."""

    name: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ApproverTokens:
    """The configured approvers' tokens; :meth:`approver_for` says whose a presented token is."""

    entries: tuple[tuple[bytes, Approver], ...]
    source: str = ""

    def approver_for(self, token: str | None) -> Approver | None:
        """The person ``token`` belongs to; None for no or an unknown token. Every digest is compared."""
        if not token:
            return None
        presented = hashlib.sha256(token.encode()).digest()
        found: Approver | None = None
        for digest, approver in self.entries:
            if hmac.compare_digest(digest, presented) and found is None:
                found = approver
        return found


def _approver_of(file: Path, key: str, value: object) -> Approver:
    if isinstance(value, str) and value.strip():
        return Approver(value.strip())
    if isinstance(value, dict) and not set(value) - {"name", "groups"}:
        name, groups = value.get("name"), value.get("groups") or []
        if isinstance(name, str) and name.strip() and isinstance(groups, list) and all(
                isinstance(g, str) and g.strip() for g in groups):
            return Approver(name.strip(), frozenset(g.strip() for g in groups))
    raise TokenFileError(file, key, "expected the person's name, or {name: NAME, groups: [GROUP, ...]}")


def load_approver_tokens(file: Path) -> ApproverTokens:
    """The people ``file`` vouches for; raises :class:`~mlplatform.lib.api_tokens.TokenFileError` naming the key."""
    raw = read_token_file(file, APPROVER_TOKENS_ENV)
    tokens = raw.get("tokens") if isinstance(raw, dict) and set(raw) == {"tokens"} else None
    if not isinstance(tokens, dict) or not tokens:
        raise TokenFileError(file, "tokens", "expected a mapping `tokens` of token (or sha256:digest, from "
                             "`mlplatform token-digest`) -> the person's name, or {name: NAME, groups: [...]}")
    entries: list[tuple[bytes, Approver]] = []
    for entry, value in tokens.items():
        key = f"tokens.{str(entry)[:16]}..."
        digest, approver = _digest_of(file, key, str(entry)), _approver_of(file, key, value)
        clash = next((a for d, a in entries if d == digest and a != approver), None)
        if clash is not None:
            raise TokenFileError(file, key, f"the same token is given to {clash.name!r} and {approver.name!r}; a "
                                 "token names one person")
        entries.append((digest, approver))
    return ApproverTokens(tuple(entries), str(file))


def approver_tokens_from_environment() -> ApproverTokens | None:
    """The file ``MLPLATFORM_APPROVER_TOKENS_FILE`` names; None when unset (approvers are names as typed)."""
    configured = os.environ.get(APPROVER_TOKENS_ENV, "").strip()
    if not configured:
        return None
    return load_approver_tokens(Path(configured).expanduser())


def authenticated_approver(tokens: ApproverTokens, token: str | None, claimed: str | None, model: str, verb: str,
                           version: str | None, reason: str | None) -> Approver:
    """The person whose ``token`` it is, who may then ``verb`` (promote, roll back) as themselves.

    Raises :class:`~mlplatform.lib.approvals.ApprovalDenied` (audited by ``move_champion``; the token is never in
    it) for no token, an unknown token, or a ``claimed`` name (``--by``) that is not the token's person."""
    refuse_control_characters(by=claimed, reason=reason)  # the claimed name goes into a refusal's audit row
    approver = tokens.approver_for(token)
    claimed = (claimed or "").strip()
    if approver is None:
        why = (f"no approver token was given (set {APPROVER_TOKEN_ENV}, or run on a terminal to be asked)" if not token
               else f"the approver token given is not in the approvers' credentials file ({APPROVER_TOKENS_ENV})")
        why += "; approvals on this platform need the approver's own token, a typed name is not enough"
        actor = f"{claimed or 'someone'} (not authenticated)"
        raise ApprovalDenied(why, refused_event(model, actor, verb, version, reason, why))
    if claimed and claimed.casefold() != approver.name.casefold():
        why = (f"the approver token is {approver.name}'s but --by names {claimed!r}; a person approves as "
               "themselves (leave --by out, or give your own name)")
        raise ApprovalDenied(why, refused_event(model, approver.name, verb, version, reason, why))
    return approver


def ui_refusal(tokens: ApproverTokens | None, model: str, typed: str, verb: str, version: str | None,
               reason: str | None) -> ApprovalDenied | None:
    """Why the Dagster UI may not ``verb`` ``model`` for a person while approvers have tokens, else None.

    Dagster's open-source webserver has no login, and its launchpad's run config (and run tags, ``user`` included)
    are typed by, and visible to, anyone who opens the UI: neither can carry a token nor prove a name."""
    if tokens is None:
        return None
    refuse_control_characters(by=typed, reason=reason)  # the typed name goes into the refusal's audit row
    command = "promote" if verb == "promote" else "rollback"
    why = (f"approvals need the approver's own token ({APPROVER_TOKENS_ENV} is set) and the Dagster UI cannot carry "
           f"one; {verb} from the CLI instead: `MLPLATFORM_APPROVER_TOKEN=... mlplatform {command} {model}` (or let "
           "it ask for the token)")
    actor = f"{(typed or '').strip() or 'someone'} (not authenticated, Dagster UI)"
    return ApprovalDenied(why, refused_event(model, actor, verb, version, reason, why))


def unauthenticated_warning(allowed: Collection[str] | None, required_approvals: int, policy: str | None) -> str | None:
    """The one line ``promote``/``rollback`` print when a policy limits approvers but names are only typed."""
    if allowed is None and required_approvals <= 1:
        return None
    return (f"warning: policy {policy!r} limits who approves, but approver identities are not authenticated (any "
            f"name typed after --by is taken): set {APPROVER_TOKENS_ENV} (docs/policies.md, Authenticated approvers)")
