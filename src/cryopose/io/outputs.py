"""The output folder of a job: checked before any work, locked while the job runs, and
cleaned up when it fails.

``output_folder(path, inputs, outputs, force)`` (a context manager) makes sure that

- ``path`` is a folder that can be written (created if absent);
- no planned output is one of the inputs (never overwritten, even with ``force``), and
  none is a file of the user's: an existing file may be replaced only if this folder's
  manifest records it as written by cryopose and it is unchanged since, or with ``force``;
- only one job runs in the folder at a time (a lock file naming the running job; the lock
  of a process that no longer exists is taken over);
- when the job fails (any exception but an interruption), the outputs it renamed into
  place are removed, and so is the folder if the job created it; an interrupted job keeps
  its checkpoints so that a rerun resumes, and the manifest records the outputs it had
  finished (a rerun replaces them without ``force``);
- when the job succeeds, the manifest records its outputs.

Files written through ``cryopose.io.atomic`` while the context is active are recorded
automatically.
"""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryopose.errors import UserError

__all__ = ["OutputFolder", "output_folder", "check_output_file", "record_written", "LOCK", "MANIFEST"]

LOCK = ".cryopose.lock"
MANIFEST = ".cryopose_manifest.json"

_active: contextvars.ContextVar["OutputFolder | None"] = contextvars.ContextVar("cryopose_output_folder", default=None)


def record_written(path: Path) -> None:
    """Note that ``path`` was renamed into place (called by the atomic writers)."""
    folder = _active.get()
    if folder is not None:
        folder.written.append(Path(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_file(
    path: Path, inputs: Iterable[Path] = (), force: bool = False, owned: dict | None = None, root: Path | None = None
) -> None:
    """UserError if writing ``path`` would replace an input, a folder, or (without ``force``)
    an existing file that ``owned`` (a manifest of paths relative to ``root``, default the
    file's folder) does not record unchanged."""
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)) or path.resolve() == Path(source).resolve():
            raise UserError(f"{path} is one of the inputs; choose another output so that the input is not overwritten")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name for the output")
    if path.exists() and not force:
        key = path.resolve().relative_to(Path(root).resolve()).as_posix() if root is not None else path.name
        if owned is None or owned.get(key) != _stamp(path):
            raise UserError(
                f"{path} exists and was not written by an earlier run of cryopose here; "
                "move it away, choose another output, or replace it",
                option="force",
            )


class OutputFolder:
    """State of one job's output folder (see the module docstring)."""

    def __init__(self, path: Path, inputs: Iterable[Path], force: bool) -> None:
        self.path = Path(path)
        self.inputs = [Path(p) for p in inputs]
        self.force = force
        self.created = False
        self.written: list[Path] = []
        self._owned: dict = {}

    # ------------------------------------------------------------------ set-up
    def _make(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UserError(
                f"output path {self.path} exists and is not a folder; choose another output folder", option="out"
            )
        for source in self.inputs:
            if _same_file(self.path, source):
                raise UserError(
                    f"the output folder {self.path} is an input; choose another output folder", option="out"
                )
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
            except OSError as exc:
                raise UserError(
                    f"cannot create the output folder {self.path} ({exc.strerror}); choose another one", option="out"
                ) from None
            self.created = True
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write into the output folder {self.path} (permission denied); choose another one", option="out"
            )
        manifest = self.path / MANIFEST
        if manifest.is_file():
            try:
                self._owned = json.loads(manifest.read_text())
            except (OSError, ValueError):
                self._owned = {}

    def _lock(self) -> None:
        lock = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:4])}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    other = json.loads(lock.read_text())
                except (OSError, ValueError):
                    other = {}
                same_host = other.get("host") == me["host"]
                if same_host and isinstance(other.get("pid"), int) and not _pid_alive(other["pid"]):
                    lock.unlink(missing_ok=True)  # a dead run's lock: take it over
                    continue
                raise UserError(
                    f"another cryopose run (pid {other.get('pid', '?')} on {other.get('host', '?')}: "
                    f"{other.get('command', '?')}) is writing into {self.path}; wait for it or choose another output "
                    "folder",
                    option="out",
                ) from None
            except OSError as exc:
                raise UserError(
                    f"cannot write into the output folder {self.path} ({exc.strerror}); choose another one",
                    option="out",
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return
        raise UserError(f"could not take the lock {lock}; remove it if no cryopose run is using {self.path}")

    def _unlock(self) -> None:
        (self.path / LOCK).unlink(missing_ok=True)

    # ------------------------------------------------------------------ use
    def claim(self, names: Iterable[str | Path]) -> None:
        """Check the outputs the job will write (paths relative to the folder), before work."""
        for name in names:
            check_output_file(self.path / name, self.inputs, self.force, self._owned, self.path)

    def _record(self) -> None:
        owned = dict(self._owned)
        root = self.path.resolve()
        for p in self.written:
            if p.exists() and p.resolve().is_relative_to(root):
                owned[p.resolve().relative_to(root).as_posix()] = _stamp(p)
        from cryopose.io.atomic import write_text_atomic

        write_text_atomic(self.path / MANIFEST, json.dumps(owned, indent=1) + "\n")

    def _clean(self) -> None:
        for p in self.written:
            p.unlink(missing_ok=True)
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def output_folder(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), outputs: Iterable[str] = (), force: bool = False
) -> Iterator[OutputFolder]:
    """Check, create and lock a job's output folder; see the module docstring."""
    folder = OutputFolder(Path(path), [Path(p) for p in inputs], force)
    folder._make()
    try:
        folder._lock()
    except BaseException:
        if folder.created:
            shutil.rmtree(folder.path, ignore_errors=True)
        raise
    token = _active.set(folder)
    try:
        folder.claim(outputs)
        yield folder
    except KeyboardInterrupt:
        folder._record()  # what it finished writing is cryopose's: a rerun may replace it
        raise
    except BaseException:
        folder._clean()
        raise
    else:
        folder._record()
    finally:
        _active.reset(token)
        if folder.path.exists():
            folder._unlock()
