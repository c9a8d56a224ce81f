"""Input files are checked before they are opened: a regular file (a FIFO or a device would block or never end),
readable, and inside the model's folder when reached through one (a symlink may not take a converter to a file the
model's owner did not put there). os.stat never blocks, so nothing here can hang."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BadInput

KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
         stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def confinement(folder: Path) -> Path:
    """Where a model folder's symlinks may lead: the folder itself, or for a snapshot in the Hugging Face hub cache
    (`models--org--name/snapshots/REV`, whose files are links to `../../blobs/`) the repo's own cache folder."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def check_file(path: Path, root: Path | None = None) -> os.stat_result:
    """The stat of `path`, a readable regular file (inside `root` once symlinks are followed); else BadInput."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(path, "is a dangling symlink" if os.path.islink(path) else "does not exist") from None
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror.lower()}") from None
    kind = next((what for test, what in KINDS.items() if test(st.st_mode)), None)
    if kind:
        raise BadInput(path, f"is {kind}, not a regular file")
    if root is not None:
        inside = Path(os.path.realpath(confinement(root)))
        if inside not in Path(os.path.realpath(path)).parents:
            raise BadInput(path, f"is a symlink that leads out of the model folder {root}")
    if not os.access(path, os.R_OK):
        raise BadInput(path, "cannot read: permission denied")
    return st


def read_bytes(path: Path, root: Path | None = None, limit: int | None = None) -> bytes:
    """A checked file's bytes; `limit` refuses a larger one before reading it."""
    st = check_file(path, root)
    if limit is not None and st.st_size > limit:
        raise BadInput(path, f"is {st.st_size} bytes, more than the {limit} this kind of file may have")
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror.lower()}") from None


def check_top(path: Path) -> None:
    """The path a user named: a folder, or a file as check_file has it; never opened here."""
    if os.path.isdir(path):
        if not os.access(path, os.R_OK | os.X_OK):
            raise BadInput(path, "cannot read: permission denied")
        return
    check_file(path)


def side_files(folder: Path, names) -> dict[str, bytes]:
    """The named files a model folder has (absent ones left out), each a checked file inside the folder."""
    return {n: read_bytes(folder / n, folder) for n in names if os.path.lexists(folder / n)}
