"""Writing the files a user named, safely: whole or not at all, never through a link.

Every output of the package (select's .npz, a workdir's results.csv, picks.csv and
config.json, the report's markdown and plots) goes through `write_atomic`: the bytes
go to a temporary file created exclusively (mkstemp: O_CREAT | O_EXCL, a random name,
so a link planted in a shared folder is never followed or overwritten) in the target's
own directory, are fsynced, take the mode a plain `open()` would give (0666 less the
umask; mkstemp's 0600 would hide results from a group), and are renamed over the
target. A reader sees the old file or the new one; a failure removes the temporary.

`check_output_path` runs first, before any work: it refuses a path that `write_atomic`
could not write, or should not (a directory, a device or fifo, a link, an input file).
"""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import IO


def current_umask() -> int:
    """The process umask (read by setting it and putting it back; there is no getter before 3.13's os)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` atomically: `write(f)` fills a binary file object; see the module docstring.
    OSError (read-only folder, full disk, ...) propagates after the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: str, text: str) -> None:
    """`write_atomic` for UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _same_file(path: str, inputs: Iterable[tuple[str, str | None]]) -> str | None:
    """The option of the first input that is the file at `path` (os.path.samefile: through links,
    relative paths and hard links), or None."""
    for option, given in inputs:
        if given is None:
            continue
        try:
            if os.path.samefile(path, given):
                return option
        except OSError:  # an input that does not exist (yet) cannot be the output; its own check names it
            if os.path.realpath(path) == os.path.realpath(given):
                return option
    return None


def check_output_path(option: str, path: str, *,
                      inputs: Mapping[str, str | None] | Iterable[tuple[str, str | None]] = ()) -> str:
    """Check, before any work, that `write_atomic` can write `path` and that doing so harms nothing.

    Refused (a ValueError naming `option`, the value and the fix): an empty name or one ending in
    a separator; a directory; anything that exists and is not a regular file (a device such as
    /dev/full, a fifo, a socket); a symbolic link, even to a regular file (the atomic rename would
    replace the link itself, not its target: name the target instead); the same file as one of
    `inputs` (option -> path, None skipped; compared with os.path.samefile, so links, relative
    paths and hard links count); a missing or non-writable parent directory.
    An existing regular file is allowed: it is replaced whole. -> the absolute path to write."""
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs)
    if not path or path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise ValueError(f"{option} {path!r}: not a file name; name the file to write, e.g. {option} out.npz")
    absolute = os.path.abspath(path)
    clash = _same_file(absolute, pairs)
    if clash is not None:
        raise ValueError(f"{option} {path!r}: the same file as {clash}; writing it would replace that input, "
                         f"so name another file for {option}")
    if os.path.islink(absolute):
        raise ValueError(f"{option} {path!r}: a symbolic link (to {os.readlink(absolute)!r}); the output is "
                         "replaced atomically, which would replace the link, not its target: name the target "
                         "itself or a new file")
    if os.path.lexists(absolute):
        mode = os.lstat(absolute).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError(f"{option} {path!r}: a directory; name a file, e.g. "
                             f"{option} {os.path.join(path, 'out.npz')}")
        if not stat.S_ISREG(mode):
            raise ValueError(f"{option} {path!r}: exists and is not a regular file ({_kind(mode)}); "
                             "name a regular file (select never writes to devices, fifos or sockets)")
    parent = os.path.dirname(absolute)
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.lexists(parent) else "does not exist"
        raise ValueError(f"{option} {path!r}: its directory {parent!r} {what}; create it first or name a file "
                         "in an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: its directory {parent!r} is not writable; choose a writable "
                         "directory or change its permissions")
    return absolute


def _kind(mode: int) -> str:
    """What a non-regular, non-directory file is, in words."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"
