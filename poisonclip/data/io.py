"""Safe file output: atomic writes that never destroy what a user already has.

Everything is written to a temporary sibling and renamed into place, so a crash or a bad input
never leaves a half-written output. An existing output is never removed unless the user allowed
it (``--overwrite``, see ``overwrite_allowed``), and even then only a previous poisonclip output:
every output directory carries ``OUTPUT_MARKER``, and the working directory, the home directory
and the directories above them are never replaced.
"""

from __future__ import annotations

import contextvars
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from poisonclip.errors import UsageError

# Written into every output directory; --overwrite replaces only directories that carry it.
OUTPUT_MARKER = ".poisonclip-output"
MARKER_TEXT = "written by poisonclip; `--overwrite` may replace this directory\n"
REPLACED = "replaced"  # the previous output, inside the temporary, while it is being replaced

# Resolved paths that the running command may replace (set by the CLI from --overwrite, after
# check_output accepted them); a context variable, so library writers need no extra argument.
_OVERWRITE_ALLOWED: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar(
    "overwrite_allowed", default=frozenset()
)


class OutputExistsError(UsageError):
    """The output path exists and replacing it was not allowed."""


@contextmanager
def overwrite_allowed(paths: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Within this block ``atomic_path`` may replace these paths (still only if replaceable)."""
    token = _OVERWRITE_ALLOWED.set(frozenset(Path(p).resolve() for p in paths))
    try:
        yield
    finally:
        _OVERWRITE_ALLOWED.reset(token)


def _host_prefix(name: str) -> str:
    # Temporaries are named ".NAME.HOST-PID.RANDOM": host and pid let a later run tell a killed
    # process's leftovers from a live one's (on a shared file system, only this host's).
    return f".{name}.{socket.gethostname()}-"


def _remove_stale_temporaries(parent: Path, name: str) -> None:
    """Remove temporaries that killed processes of this host left beside ``parent / name`` (and
    put back an output that one was replacing when it was killed between its two renames)."""
    prefix = _host_prefix(name)
    for entry in parent.iterdir():
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if entry.name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
            if os.path.lexists(entry / REPLACED) and not os.path.lexists(parent / name):
                os.rename(entry / REPLACED, parent / name)
            shutil.rmtree(entry, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie is not: a killed process whose
    parent died too may never be reaped in a container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux), or it just exited
        return True
    return state != "Z"


def _is_nonempty(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return os.path.lexists(path)


def _refuse_protected(path: Path) -> None:
    """Never replace the working or home directory, or a directory above either (``/`` too)."""
    real = path.resolve()
    for protected, what in ((Path.cwd(), "the current directory"), (Path.home(), "the home directory")):
        protected = protected.resolve()
        if real == protected or real in protected.parents:
            raise UsageError(f"{path}: refusing to replace {what} or a directory above it")


def _check_replaceable(path: Path, directory: bool) -> None:
    """Raise unless ``path`` (which exists) may be replaced by a new output of the given kind."""
    _refuse_protected(path)
    if path.is_dir() and not path.is_symlink():
        if not directory:
            raise UsageError(f"{path} is a directory; give a file path")
        if _is_nonempty(path) and not (path / OUTPUT_MARKER).is_file():
            raise UsageError(
                f"{path} is not a poisonclip output (no {OUTPUT_MARKER} in it); refusing to replace "
                "it: remove it yourself or choose another path"
            )
    elif directory:
        raise UsageError(f"{path} exists and is not a directory")


def check_creatable(path: Path) -> None:
    """Refuse a ``path`` that could not be created: its nearest existing ancestor must be a
    writable directory."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {path}: {ancestor} is not writable")


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike] = (),
    directory: bool = True,
    name: str = "--out",
) -> None:
    """Refuse, before any work, an output path that the command could not or should not write.

    ``path`` must be non-empty and creatable; if it exists and is not empty it needs ``overwrite``,
    must be a previous poisonclip output of the same kind (directory or file), must not be the
    working or home directory or above them, and must not hold (or be, or lie in) an ``input`` of
    the command.
    """
    if not str(path).strip():
        raise UsageError(f"{name} is empty (an unset shell variable?)")
    path = Path(path)
    check_creatable(path)
    _refuse_protected(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() != directory or not _is_nonempty(path):
        _check_replaceable(path, directory)  # a file where a directory goes, or the reverse
        return
    if not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty; pass --overwrite to replace it")
    _check_replaceable(path, directory)
    real = path.resolve()
    for given in inputs:
        other = Path(given).resolve()
        if other == real or real in other.parents or other in real.parents:
            raise UsageError(f"refusing to replace {path}: it holds or is part of the input {given}")


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or directory); rename it to ``path`` on success.

    On any exception the temporary is removed and ``path`` is untouched. A directory output gets
    ``OUTPUT_MARKER``. An existing ``path`` is replaced only if it is an empty directory, or if
    ``overwrite`` (or ``overwrite_allowed``) allows it and it is replaceable; otherwise
    ``OutputExistsError``, after the work, with nothing changed. Temporaries left by killed
    processes beside ``path`` are removed first.
    """
    path = Path(path)
    if not path.name:
        raise UsageError(f"{path}: not a name an output can have")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent, path.name)
    workspace = Path(tempfile.mkdtemp(prefix=f"{_host_prefix(path.name)}{os.getpid()}.", dir=path.parent))
    tmp = workspace / path.name
    try:
        yield tmp
        directory = tmp.is_dir()
        if directory:
            (tmp / OUTPUT_MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        if os.path.lexists(path):
            if _is_nonempty(path) and not (overwrite or path.resolve() in _OVERWRITE_ALLOWED.get()):
                raise OutputExistsError(f"{path} exists and is not empty; pass --overwrite to replace it")
            _check_replaceable(path, directory)
            os.rename(path, workspace / REPLACED)  # removed with the workspace below
            try:
                os.rename(tmp, path)
            except OSError:
                os.rename(workspace / REPLACED, path)
                raise
        else:
            _rename_no_clobber(tmp, path, directory)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _rename_no_clobber(tmp: Path, path: Path, directory: bool) -> None:
    """Rename ``tmp`` to ``path`` unless something appeared there meanwhile (another process)."""
    try:
        if directory:
            os.rename(tmp, path)  # fails on a non-empty directory, replaces an empty one
        else:
            os.link(tmp, path)  # unlike a rename, fails if the file exists
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise OutputExistsError(f"{path} appeared while this command ran; not replaced") from err
        if directory or err.errno not in (errno.EPERM, errno.ENOTSUP):
            raise
        os.replace(tmp, path)  # a file system without hard links


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
