"""Files written whole or not at all: a temporary file beside the target, then one rename.

A reader (a resumed run, a report, a second process) sees the old file or the new one, never half
of one. The rename is atomic on one filesystem, which is why the temporary file sits in the target's
folder. There is no fsync: this guards against a crash or a kill of the process, not a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def usual_mode(path: str | Path) -> None:
    """Give a file made private by `tempfile` (0600) the mode new files get under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomic(path: Path, chunks: Iterable[str]) -> Path:
    """Write text to a temp file beside `path`, then rename: readers never see a half-written file.

    On an error (a full disk, a failing `chunks`) the temp file is removed and the old `path` stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,  # noqa: SIM115 (closed below)
                                    prefix=f".{path.name}.", newline="\n")
    try:
        with f:  # closed, so flushed, before the rename: a full disk fails here and the old file stays
            f.writelines(chunks)
        usual_mode(f.name)  # temp files are private (0600); the result gets the usual mode
        os.replace(f.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(f.name)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`write_atomic` of one string."""
    return write_atomic(path, [text])
