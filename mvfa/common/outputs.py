"""Where the scripts write, and how: every output place checked before the work starts, every file
written whole. Torch-free, so a script checks its outputs before torch is imported.

A script declares the places it will write (`Output`: the flag that names it, the path, a file or a
folder) and calls `check_outputs` first: a place that cannot be created or written is one line naming
the flag and the path, and nothing is created. Files are then written with `atomic_write` (a
temporary file beside the target, renamed over it), so a write that fails mid-run (disk full, the
folder removed or made read-only) leaves the earlier file intact and raises `WriteFailed`: one line,
to which the caller adds what was kept and how to go on.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Sequence

from mvfa.common.errors import UserError

FILE, FOLDER = 'file', 'folder'
# A new file's mode before the umask, as open() gives it: 0644 under the usual umask 022.
NEW_FILE_MODE = 0o666


@dataclass(frozen=True)
class Output:
    """A place a script writes: the flag that names it (for the message), the path, FILE or FOLDER."""
    flag: str
    path: Path
    kind: str = FOLDER


class OutputError(UserError):
    """An output place cannot be created or written, found before the work starts."""


class WriteFailed(UserError):
    """A write failed during the run; the message says which file, why, and (`noting`) what was kept."""

    def __init__(self, path: Path, reason: str, notes: tuple = ()) -> None:
        self.path, self.reason, self.notes = Path(path), reason, notes
        super().__init__('; '.join([f'cannot write {path} ({reason})', *notes]))

    def noting(self, *notes: str) -> 'WriteFailed':
        """The same failure, its message followed by `notes` (what was kept, how to go on)."""
        return WriteFailed(self.path, self.reason, self.notes + notes)


def checkpoint_path(args: argparse.Namespace) -> Path:
    """The adapters of --obj under --save_path."""
    return Path(args.save_path) / f'{args.obj}.pth'


def sidecar_path(path: Path) -> Path:
    """The JSON beside a checkpoint that records how it was made."""
    return Path(path).with_suffix('.json')


def resume_path(checkpoint: Path) -> Path:
    """`<Obj>.resume.pt` beside the `<Obj>.pth` checkpoint."""
    return Path(checkpoint).with_suffix('.resume.pt')


def curve_path(checkpoint: Path) -> Path:
    """`<Obj>.curve.csv`, a training run's losses and scorings, beside the `<Obj>.pth` checkpoint."""
    return Path(checkpoint).with_suffix('.curve.csv')


def tensorboard_path(checkpoint: Path) -> Path:
    """`tensorboard/<Obj>/`, the folder of a training run's TensorBoard scalars, beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / 'tensorboard' / checkpoint.stem


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path('.')


def _cannot_write_in(folder: Path) -> Optional[str]:
    """Why no file can be created in `folder`, or None: found by creating one and removing it, which
    sees what permission bits alone do not (a read-only file system, an immutable folder, root)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix='.mvfa-probe-')
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.remove(probe)
    return None


def _problem(place: Output, probed: Dict[Path, Optional[str]]) -> Optional[str]:
    path = place.path
    if path.exists():
        if place.kind == FOLDER and not path.is_dir():
            return f'{path} is a file, not a folder'
        if place.kind == FILE and path.is_dir():
            return f'{path} is a folder, not a file'
    # A file is written beside itself, then renamed over the old one: its folder must take new files.
    folder = _nearest_existing(path if place.kind == FOLDER else path.parent)
    if not folder.is_dir():
        return f'cannot create {path}: {folder} is a file'
    if folder not in probed:
        probed[folder] = _cannot_write_in(folder)
    if probed[folder] is not None:
        return f'cannot write in {folder} ({probed[folder]})'
    return None


def check_outputs(places: Iterable[Output]) -> None:
    """Raise OutputError, naming the flag and the path, for the first place that cannot be created and
    written; nothing is created (a folder that does not exist yet is judged by its nearest existing one)."""
    probed: Dict[Path, Optional[str]] = {}
    for place in places:
        problem = _problem(place, probed)
        if problem is not None:
            raise OutputError(f'{place.flag} {place.path}: {problem}: give a {place.kind} you can write to')


def _temporary_beside(path: Path) -> Path:
    """A new empty file in `path`'s folder, created as open() creates files (the umask applies)."""
    while True:
        temporary = path.with_name(f'.{path.name}.{secrets.token_hex(4)}.tmp')
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE))
            return temporary
        except FileExistsError:
            continue


def write_whole(path: Path, data: bytes) -> None:
    """Write `data` to the file at `path` (the temporary file of `atomic_write_all`)."""
    with open(path, 'wb') as handle:
        handle.write(data)


def atomic_write_all(files: Dict[Path, bytes | str]) -> None:
    """Write each file (text as UTF-8) through a temporary file beside it, then rename them all: never a
    half-written file, and files that belong together (a checkpoint and its sidecar) are replaced together.
    An OSError becomes WriteFailed naming the file; the temporary files are removed."""
    temporaries: Dict[Path, Path] = {}
    current = None
    try:
        for current, data in files.items():
            current.parent.mkdir(parents=True, exist_ok=True)
            temporaries[current] = _temporary_beside(current)
            write_whole(temporaries[current], data.encode('utf-8') if isinstance(data, str) else data)
        for current, temporary in temporaries.items():
            os.replace(temporary, current)
    except OSError as error:
        raise WriteFailed(current, error.strerror or str(error)) from None
    finally:
        for temporary in temporaries.values():
            try:
                temporary.unlink(missing_ok=True)
            except OSError:  # the folder itself became unwritable: nothing more can be done here
                pass


def atomic_write(path: Path, data: bytes | str) -> None:
    """`atomic_write_all` of one file."""
    atomic_write_all({Path(path): data})


def csv_text(rows: Iterable[Dict], columns: Sequence[str]) -> str:
    """Rows as the text of a CSV file (None: an empty cell), for `atomic_write`."""
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows({key: '' if value is None else value for key, value in row.items()} for row in rows)
    return text.getvalue()


@contextmanager
def naming_command(command: str) -> Iterator[None]:
    """Around a script run in-process (reproduce.py, demo.py): a failed write also names the command,
    which is what 'the same command' of the message means."""
    try:
        yield
    except WriteFailed as error:
        raise error.noting(f'the command: {command}') from None
