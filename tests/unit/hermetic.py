"""envd under test, kept off this host's own login files.

envd's commands run in login shells (`bash -l -c`), like in a sandbox. On a
test host, root's ~/.profile and ~/.bashrc are whatever the machine has
(pyenv's init, say, whose rehash takes a lock that a command killed half
way through its profile leaves behind, stalling every later login shell for
a minute). Tests run envd in a mount namespace of its own where root's home
is an empty directory, as in a fresh sandbox; the namespace, and with it
the mount, goes away with envd."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def wrap(argv: list[str]) -> tuple[list[str], Path | None]:
    """argv to launch instead, and the empty home to remove after envd."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return argv, None
    home = Path(tempfile.mkdtemp(prefix="envd-home-"))
    home.chmod(0o700)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /root && exec "$@"', str(home), *argv], home


def remove(home: Path | None) -> None:
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
