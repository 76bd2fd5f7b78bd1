"""The project's one error type: every user-facing failure names the problem and the fix."""

from __future__ import annotations


class InstructuneError(Exception):
    """A problem the user can fix. The CLI prints the message (no traceback) and exits with code 2.

    Write messages as: what is wrong, where (file, line, field), and what to do about it.
    """

    exit_code = 2


def collect(problems: list[str], header: str) -> None:
    """Raise one InstructuneError listing every problem at once, if there are any."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise InstructuneError(f"{header} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")
