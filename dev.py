#!/usr/bin/env python3
"""Set up and run mlplatform with nothing but python3: `python3 dev.py demo` / `python3 dev.py test`.

Creates .venv (once, and again when requirements.lock changes), installs the exact
tested versions with uv, prepares the dbt manifest, then runs the command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MLPLATFORM_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".mlplatform-installed"
UV_VERSION = "0.13.8"

USAGE = """usage: python3 dev.py COMMAND [ARGS...]

  demo [ARGS]   run the whole lifecycle on the bundled data (mlplatform demo ARGS)
  test [ARGS]   run the test suite (pytest ARGS); CI runs exactly this
  ui   [ARGS]   open the Dagster UI on the demo's state (mlplatform ui ARGS)
  lint          ruff on the code
  install       only set up .venv
  any other     run as `mlplatform COMMAND ARGS` inside .venv
"""


def run(command: list[str], **kwargs) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, cwd=ROOT, **kwargs)


def install() -> None:
    """Idempotent: skipped when the stamp matches the lock file and setup.py."""
    fingerprint = hashlib.sha256(LOCK.read_bytes() + (ROOT / "setup.py").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run([PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"uv=={UV_VERSION}"])
    # Bytecode compiled once at install: every process (dagster runs, tests, workers) would otherwise
    # recompile the whole stack from source where PYTHONDONTWRITEBYTECODE is set (imports 8 s -> 3 s).
    run([BIN / "uv", "pip", "install", "--quiet", "--compile-bytecode", "--python", PYTHON, "-r", LOCK])
    run([BIN / "uv", "pip", "install", "--quiet", "--python", PYTHON, "--no-deps", "-e", ROOT])
    STAMP.write_text(fingerprint)


def prepare() -> None:
    """The dbt manifest, built only when missing or stale (cheap check otherwise)."""
    subprocess.run([BIN / "mlplatform", "prepare"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    install()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(VENV)}
    prepare()
    if command == "install":
        return 0
    if command == "test":
        return subprocess.run([PYTHON, "-m", "pytest", *args], cwd=ROOT, env=env).returncode
    if command == "lint":
        return subprocess.run([BIN / "ruff", "check", "."], cwd=ROOT, env=env).returncode
    return subprocess.run([BIN / "mlplatform", command, *args], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
