"""Where a command writes, checked against what it reads: an output never destroys one of its inputs.

    refuse_overwrite("--out", args.out, [out], {"SOURCE": source}, "give --out a new file name")

`instructune data distill data.jsonl --out data.jsonl` once replaced a 50-conversation file with the
teacher's 2 answers and exited 0. Paths are compared as the files they name: the same inode where both
exist (`os.path.samefile`: symlinks, hard links, `a/../b`), else the same path once symlinks resolve.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from instructune.errors import InstructuneError

PathLike = str | os.PathLike


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether `a` and `b` name one file or folder."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return _resolved(a) == _resolved(b)


def inside(path: PathLike, folder: PathLike) -> bool:
    """Whether `path` lies somewhere below `folder` (not the folder itself)."""
    return any(same_path(parent, folder) for parent in _resolved(path).parents)


def refuse_overwrite(option: str, value: PathLike, writes: Iterable[PathLike], inputs: Mapping[str, PathLike | None],
                     fix: str, whole: bool = False) -> None:
    """Raise InstructuneError (exit 2) when a path in `writes` (what `option value` makes the command write)
    would destroy an input: it is an input file or folder, or lies inside an input folder, or, with `whole`
    (an output folder replaced whole), holds an input. `inputs` maps each input's name (an option, an
    argument) to its path; names that are not paths here (a pack, a hub id) are passed over."""
    given = {label: Path(p).expanduser() for label, p in inputs.items() if p not in (None, "")}  # "" is no path
    here = {label: p for label, p in given.items() if p.exists()}
    for write in map(Path, writes):
        for label, path in here.items():
            if same_path(write, path):
                relation = f"is the input {label} ({path})"
            elif path.is_dir() and inside(write, path):
                relation = f"lies inside the input folder {label} ({path})"
            elif whole and inside(path, write):
                relation = f"holds the input {label} ({path}) and would be replaced whole"
            else:
                continue
            subject = f"{option} {value}" + ("" if same_path(write, value) else f" would write {write}, which")
            raise InstructuneError(f"{subject} {relation}: writing there would destroy what the command reads; "
                                   f"{fix}.")


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()
