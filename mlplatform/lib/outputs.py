"""Where a command may write what a person asked for (``card --output FILE``, ``backup --to FOLDER``).

An output path comes from a person, so it can be anything: a missing folder, a directory, a FIFO, a file
under ``/proc``, or a symbolic link planted to make the platform overwrite something else. Every such path
gets a one-line refusal naming the path and why; an existing file is replaced only when the person said so
(``--force``); a symbolic link is never followed (the file is written next to its final name and renamed
over it, and rename replaces a link itself, never its target).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class OutputRefused(ValueError):
    """The output path cannot or must not be written; the message names it and why."""


def checked_output_path(path: str | os.PathLike[str], folder: bool = False, force: bool = False) -> Path:
    """The absolute path to write, after refusing what must not be written (:class:`OutputRefused`).

    A file (``folder=False``): its folder must exist; the path must not be a link, a folder or a special file;
    an existing regular file only with ``force``. A folder (``folder=True``): new (its parent must exist) or an
    existing empty folder, never a link. Nothing is resolved through a symbolic link.
    """
    given = Path(os.path.abspath(Path(path).expanduser()))  # no resolve(): that would follow a link
    kind = "folder" if folder else "file"
    if not given.name:
        raise OutputRefused(f"{path}: give a {kind} name, not the root folder")
    parent = given.parent
    try:
        parent_mode = parent.stat().st_mode
    except FileNotFoundError:
        raise OutputRefused(f"{given}: the folder {parent} does not exist; create it first") from None
    except OSError as error:
        raise OutputRefused(f"{given}: the folder {parent} cannot be read ({error.strerror})") from None
    if not stat.S_ISDIR(parent_mode):
        raise OutputRefused(f"{given}: {parent} is not a folder")
    try:
        mode = given.lstat().st_mode
    except FileNotFoundError:
        return given
    except OSError as error:
        raise OutputRefused(f"{given} cannot be checked ({error.strerror})") from None
    if stat.S_ISLNK(mode):
        raise OutputRefused(f"{given} is a symbolic link; output never follows one: give the real path")
    if folder:
        if not stat.S_ISDIR(mode):
            raise OutputRefused(f"{given} exists and is not a folder; give a new or empty folder")
        try:
            if any(given.iterdir()):
                raise OutputRefused(f"{given} is not empty; give a new folder")
        except OSError as error:
            raise OutputRefused(f"{given} cannot be listed ({error.strerror})") from None
        return given
    if stat.S_ISDIR(mode):
        raise OutputRefused(f"{given} is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise OutputRefused(f"{given} is not a regular file (a device, pipe or socket); give a file name")
    if not force:
        raise OutputRefused(f"{given} exists; give --force to replace it")
    return given


def write_output_text(path: str | os.PathLike[str], text: str, force: bool = False) -> Path:
    """Write ``text`` to a path :func:`checked_output_path` accepts: into a new file beside it, then renamed over
    it, so a reader never sees half a file and a link put there meanwhile is replaced, not followed."""
    target = checked_output_path(path, force=force)
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputRefused(f"{target}: cannot write in {target.parent} ({error.strerror})") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
        if force or not _linked(temporary, target):
            os.replace(temporary, target)
    except FileExistsError:
        Path(temporary).unlink(missing_ok=True)
        raise OutputRefused(f"{target} exists; give --force to replace it") from None
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputRefused(f"{target}: cannot write it ({error.strerror})") from None
    return target


def _linked(temporary: str, target: Path) -> bool:
    """Give the new file its name unless the name was taken since the check (then FileExistsError: never a silent
    overwrite). False on a file system without hard links: the caller renames instead."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError:
        return False
    os.unlink(temporary)
    return True
