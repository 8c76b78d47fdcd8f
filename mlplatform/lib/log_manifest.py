"""The prediction log's manifest: a checksum chain over its segments, so a deleted, truncated or edited segment is named.

The prediction log feeds drift, the training-data gate and live performance, and is kept as the record of what the
service answered; its segments are plain Parquet files (or objects) anyone with the disk or the bucket can rewrite.
So every writer seals each segment it publishes with a manifest entry beside the log::

    <model>/_manifest/<writer>/<seq>.json   {"segment", "bytes", "sha256", "rows", "writer", "seq", "prev", ...}

One chain per writer and model (a writer is one log writer process: a replica's start, a child writer process):
``seq`` counts from 1, ``prev`` is the previous entry's hash, ``hash`` covers the entry (HMAC-SHA256 with the audit
key when one is configured, lib/audit_key.py; SHA-256 otherwise). Writers never share a chain, so replicas on
several machines need no coordination. :func:`verify_log` compares the entries with the segments: a segment missing,
of another size or another SHA-256, an entry missing from the middle of a chain, an edited entry, or a segment no
entry lists.

A writer's newest segments deleted together with their entries leave a shorter chain that is still valid; so after
every entry the writer also writes its head (seq and hash, HMAC-signed with the audit key when one is configured)
to a checkpoint file outside the log, ``<home>/audit_checkpoints/prediction_log/<model>/<writer>.json`` (beside the
audit trail's checkpoints). :func:`verify_log` compares each checkpoint with its chain: entries after the chain's
end, a whole chain gone, or another hash at the anchored entry are named. Not caught: the log and its checkpoints
deleted together (keep ``audit_checkpoints`` on storage the log's writers cannot rewrite, or back it up), a bucket
log verified on a machine without the writers' checkpoints (then nothing anchors the heads: the verdict says so),
and anything by someone holding the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.lib.audit_key import KEYED_SCHEME_PREFIX, UNKEYED_SCHEME, AuditKey, configured_key

log = logging.getLogger(__name__)

MANIFEST_DIR_NAME = "_manifest"
CHECKPOINTS_DIR = Path("audit_checkpoints") / "prediction_log"
"""Under the writer's home: one checkpoint file per model and writer, its chain's head."""
ENTRY_SUFFIX = ".json"
SEGMENT_SUFFIX = ".parquet"
GENESIS = "0" * 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _entry_hash(entry: dict[str, Any], key: AuditKey | None) -> str:
    text = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True)
    return key.mac(text) if key is not None else hashlib.sha256(text.encode()).hexdigest()


def checkpoint_folder(home: Path, model: str) -> Path:
    """Where the writers' checkpoints of ``model``'s log are: one ``<writer>.json`` each."""
    return Path(home) / CHECKPOINTS_DIR / model


def _head_text(model: str, writer: str, seq: int, head_hash: str) -> str:
    return f"mlplatform prediction log head\n{model}\n{writer}\n{seq}\n{head_hash}"


def head_value(model: str, writer: str, seq: int, head_hash: str, key: AuditKey | None) -> str:
    """A checkpoint's JSON: the writer's head, and with a key its scheme and HMAC."""
    value: dict[str, Any] = {"writer": writer, "seq": seq, "hash": head_hash,
                             "scheme": key.scheme if key else UNKEYED_SCHEME}
    if key is not None:
        value["mac"] = key.mac(_head_text(model, writer, seq, head_hash))
    return json.dumps(value, sort_keys=True)


def read_checkpoints(home: Path, model: str) -> dict[str, str]:
    """Every writer's checkpoint of ``model`` under ``home`` (writer -> the file's text)."""
    folder = checkpoint_folder(home, model)
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            found[path.stem] = path.read_text()
        except OSError as error:
            found[path.stem] = f"unreadable: {error}"
    return found


class SegmentManifest:
    """Seals one writer's segments, chaining its entries per model, and anchors the chain's head in a checkpoint file
    under ``checkpoints`` (the writer's home; None: no checkpoint). The key is read once, when the writer starts (an
    unusable key setting refuses here, with the setting named)."""

    def __init__(self, writer: str | None = None, key: AuditKey | None = None, use_configured_key: bool = True,
                 checkpoints: Path | None = None):
        self.writer = _UNSAFE.sub("_", writer or uuid.uuid4().hex[:12]).strip("_.-")[:96] or uuid.uuid4().hex[:12]
        self.key = configured_key() if key is None and use_configured_key else key
        self.checkpoints = checkpoints
        self._heads: dict[str, tuple[int, str]] = {}

    def seal(self, root: Path, model: str, segment: Path, rows: int) -> Path:
        """Write the entry of a published segment (atomically, fsynced); returns the entry's path."""
        seq, prev = self._heads.get(model, (0, GENESIS))
        data = segment.read_bytes()
        entry: dict[str, Any] = {
            "segment": segment.relative_to(root / model).as_posix(), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "rows": rows, "writer": self.writer, "seq": seq + 1,
            "prev": prev, "sealed_at": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z",
            "scheme": self.key.scheme if self.key is not None else UNKEYED_SCHEME}
        entry["hash"] = _entry_hash(entry, self.key)
        folder = root / model / MANIFEST_DIR_NAME / self.writer
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{seq + 1:08d}{ENTRY_SUFFIX}"
        partial = folder / f".{path.name}.partial"
        with open(partial, "w") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        self._heads[model] = (seq + 1, entry["hash"])
        self._checkpoint(model, seq + 1, entry["hash"])
        return path

    def _checkpoint(self, model: str, seq: int, head_hash: str) -> None:
        """The chain's head, outside the log (atomically). Never raises: a checkpoint not written is logged, and the
        chain and its key still hold."""
        if self.checkpoints is None:
            return
        try:
            folder = checkpoint_folder(self.checkpoints, model)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self.writer}.json"
            partial = folder / f".{path.name}.partial"
            partial.write_text(head_value(model, self.writer, seq, head_hash, self.key) + "\n")
            os.replace(partial, path)
        except Exception as error:  # noqa: BLE001 - a second anchor, never a reason to lose a segment
            log.warning("prediction log checkpoint of %s (writer %s) not written: %s", model, self.writer, error)


def is_manifest_entry(relative: str) -> bool:
    parts = relative.split("/")
    return len(parts) == 3 and parts[0] == MANIFEST_DIR_NAME and parts[2].endswith(ENTRY_SUFFIX) \
        and not parts[2].startswith(".")


def local_log_files(model_dir: Path) -> dict[str, Path]:
    """A model's published segments and manifest entries on disk, by path relative to the model's folder."""
    if not model_dir.is_dir():
        return {}
    found = {}
    for path in model_dir.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        relative = path.relative_to(model_dir).as_posix()
        if relative.endswith(SEGMENT_SUFFIX) or is_manifest_entry(relative):
            found[relative] = path
    return found


@dataclass
class LogVerdict:
    """What ``audit --verify-log`` says: every problem (exit 1 when any), notes, and what was checked."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    rows: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_log(files: dict[str, Path], key: AuditKey | None, checkpoints: dict[str, str] | None = None,
               model: str = "") -> LogVerdict:
    """Check a model's segments against its manifest entries (``files``: :func:`local_log_files` or the local copies
    of a bucket's objects, by path relative to the model), and each writer's chain against its checkpoint
    (``checkpoints``: :func:`read_checkpoints`; None: not anchored)."""
    verdict = LogVerdict()
    heads: dict[str, dict[int, str]] = defaultdict(dict)  # writer -> seq -> hash, of the readable entries
    keyed_writers: set[str] = set()
    segments = {rel: path for rel, path in files.items() if rel.endswith(SEGMENT_SUFFIX)}
    chains: dict[str, list[tuple[str, dict[str, Any] | None]]] = defaultdict(list)
    for rel in sorted(r for r in files if is_manifest_entry(r)):
        try:
            entry = json.loads(files[rel].read_text())
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except (ValueError, OSError):
            verdict.problems.append(f"manifest entry {rel} is unreadable: it was edited or truncated")
            entry = None
        chains[rel.split("/")[1]].append((rel, entry))
    listed: set[str] = set()
    unkeyed_writers, unverifiable = [], defaultdict(list)
    for writer, entries in sorted(chains.items()):
        previous, expected = GENESIS, 1
        readable = sorted(((e["seq"], rel, e) for rel, e in entries if e is not None and isinstance(e.get("seq"), int)),
                          key=lambda item: item[0])
        for seq, rel, entry in readable:
            if seq != expected:
                lost = f"entry {expected}" if seq == expected + 1 else f"entries {expected}..{seq - 1}"
                verdict.problems.append(f"writer {writer}: manifest {lost} missing: segments were deleted together with "
                                        "their manifest entries")
            if entry.get("prev") != previous:
                verdict.problems.append(f"writer {writer}: manifest entry {seq} does not follow the one before it: an "
                                        "entry before it was changed or deleted")
            scheme = str(entry.get("scheme", ""))
            entry_key = None
            checkable = True
            if scheme.startswith(KEYED_SCHEME_PREFIX):
                keyed_writers.add(writer)
                if key is None or scheme != key.scheme:
                    unverifiable[scheme].append(f"{writer}#{seq}")
                    checkable = False
                entry_key = key
            elif scheme == UNKEYED_SCHEME:
                if writer not in unkeyed_writers:
                    unkeyed_writers.append(writer)
            else:
                verdict.problems.append(f"manifest entry {rel} names an unknown hash scheme {scheme!r}")
                checkable = False
            if checkable and _entry_hash(entry, entry_key) != entry.get("hash"):
                verdict.problems.append(f"manifest entry {rel} was edited (its hash no longer matches its content"
                                        + (", or it was forged without the audit key)" if entry_key else ")"))
            previous, expected = str(entry.get("hash")), seq + 1
            heads[writer][seq] = previous
            segment = str(entry.get("segment"))
            listed.add(segment)
            path = segments.get(segment)
            if path is None:
                verdict.problems.append(f"segment {segment} ({entry.get('rows')} rows, writer {writer} #{seq}) is "
                                        "missing: deleted")
                continue
            size = path.stat().st_size
            if size != entry.get("bytes"):
                verdict.problems.append(f"segment {segment} is {'truncated' if size < int(entry.get('bytes') or 0) else 'changed'}: "
                                        f"{size} bytes, the manifest says {entry.get('bytes')}")
            elif _sha256(path) != entry.get("sha256"):
                verdict.problems.append(f"segment {segment} was edited: its SHA-256 differs from the manifest's "
                                        "(rewritten scores or inputs)")
            verdict.segments += 1
            verdict.rows += int(entry.get("rows") or 0)
    for segment in sorted(set(segments) - listed):
        verdict.problems.append(f"segment {segment} is in no manifest: added behind the writers' backs, written before "
                                "manifests existed, or by a writer killed between publishing it and sealing it")
    for scheme, which in unverifiable.items():
        verdict.problems.append(f"{len(which)} manifest entries are keyed with audit key "
                                f"{scheme.removeprefix(KEYED_SCHEME_PREFIX)}, but "
                                + ("no audit key is configured here" if key is None else
                                   f"the configured key is {key.key_id}")
                                + ": they cannot be verified; set MLPLATFORM_AUDIT_KEY to the key the service used")
    if unkeyed_writers:
        verdict.notes.append(f"{len(unkeyed_writers)} writer(s) sealed without a key (plain SHA-256: anyone who can "
                             "write the log can recompute them): " + ", ".join(unkeyed_writers[:5])
                             + (" ..." if len(unkeyed_writers) > 5 else ""))
    if checkpoints:
        for writer, text in sorted(checkpoints.items()):
            _check_head(model, writer, text, heads.get(writer, {}), writer in chains, writer in keyed_writers, key,
                        verdict)
        unanchored = sorted(set(chains) - set(checkpoints))
        verdict.notes.append(f"{len(chains)} writer chain(s), {len(checkpoints)} anchored by a checkpoint file"
                             + ("; not anchored here (a writer on another machine, or before checkpoints): "
                                + ", ".join(unanchored[:5]) + (" ..." if len(unanchored) > 5 else "")
                                if unanchored else ""))
    else:
        verdict.notes.append(f"{len(chains)} writer chain(s); no checkpoint file anchors their heads here, so a "
                             "writer's newest segments deleted together with their entries are not seen")
    return verdict


def _check_head(model: str, writer: str, text: str, heads: dict[int, str], has_chain: bool, keyed: bool,
                key: AuditKey | None, verdict: LogVerdict) -> None:
    """One writer's checkpoint against its chain (``heads``: seq -> hash of its readable entries)."""
    source = f"the checkpoint of writer {writer}"
    try:
        value = json.loads(text)
        seq, head_hash = int(value["seq"]), str(value["hash"])
        scheme = str(value.get("scheme", UNKEYED_SCHEME))
    except (ValueError, TypeError, KeyError):
        verdict.problems.append(f"{source} is unreadable ({text[:80]!r}): it was edited by hand")
        return
    if scheme.startswith(KEYED_SCHEME_PREFIX):
        if key is None or scheme != key.scheme:
            verdict.problems.append(f"{source} is signed with audit key {scheme.removeprefix(KEYED_SCHEME_PREFIX)}, "
                                    "which is not configured here: set MLPLATFORM_AUDIT_KEY to the key the service used")
            return
        if not key.check(_head_text(model, writer, seq, head_hash), str(value.get("mac", ""))):
            verdict.problems.append(f"{source} (entry {seq}) does not carry a valid signature of the audit key: it "
                                    "was forged or edited")
            return
    elif key is not None and keyed:
        verdict.problems.append(f"{source} (entry {seq}) is not signed although its chain is keyed: it was replaced "
                                "by someone without the key")
        return
    if not has_chain:
        verdict.problems.append(f"writer {writer}: its whole manifest chain is gone: {source} says it sealed {seq} "
                                "segment(s); the segments were deleted together with their manifest entries")
        return
    newest = max(heads) if heads else 0
    if seq > newest:
        lost = f"entry {seq}" if seq == newest + 1 else f"entries {newest + 1}..{seq}"
        verdict.problems.append(f"writer {writer}: manifest {lost} deleted with their segments (the newest): {source} "
                                f"says the chain reached entry {seq}, the log holds {newest}")
    elif heads.get(seq) is not None and heads[seq] != head_hash:
        verdict.problems.append(f"writer {writer}: manifest entry {seq} is not the entry {source} anchored: the chain "
                                "was rewritten up to there")

