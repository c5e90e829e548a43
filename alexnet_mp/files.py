"""Writing a user's output file: whole or not at all, with a clear error when it cannot be written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def atomic_write(out: Path, write: Callable[[str], None], *, option: str = "--out") -> None:
    """Write ``out`` through a temporary file in its folder: whole or not at all.

    ``write`` gets the temporary file's path. An ``OSError`` (an unwritable or missing-parent
    folder, a full disk) becomes a :class:`UserError` naming ``option`` and the file.
    """
    out = Path(out)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result is an ordinary file
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"{option} {out}: cannot write it ({err.strerror or err}); choose a writable place.") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(out: Path, *, option: str) -> None:
    """Before long work: refuse ``out`` when it is a folder, or when its nearest existing folder
    cannot take a file (tried with a temporary file, which is removed)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{option} {out}: is a folder; give a file name inside it.")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option} {out}: {folder} is not a folder; choose a writable place.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=folder)
    except OSError as err:
        raise UserError(f"{option} {out}: the folder {folder} is not writable ({err.strerror or err}); "
                        "choose a writable place.") from None
    os.close(fd)
    os.unlink(tmp)
