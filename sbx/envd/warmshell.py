"""Shells started ahead of need, so that ``commands.run`` does not wait for
bash to start.

Both SDKs run a command as ``/bin/bash [-l] -c CMD``. Under gVisor a login
shell costs 100 ms and more before it runs anything (a fork and an exec,
then the profile's own subshells); a command like ``true`` costs nothing
after that. So envd keeps one shell per (user, login) started and idle: it
has read its profile and waits on a private pipe for the script to run. A
request that fits takes it, writes ``cd``, its environment and the command
into that pipe, and the shell ``eval``s it with the request's stdout,
stderr and stdin already attached. A new spare starts behind it.

A spare must behave as a fresh shell would. It is only used when:
- the files a login shell reads, the user's ``~/bin``/``~/.local/bin`` and
  the hostname are as they were when it started (else it is thrown away);
- every variable to set is a plain name that bash does not treat specially
  at start (``PATH``, ``HOME``, ``BASH_ENV`` and the like take the cold path,
  because a fresh login shell would read its profile with them in place);
- the script is small and has no NUL byte.
Anything else starts bash the ordinary way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .users import User, drop_to, stat_signature

log = logging.getLogger(__name__)

SHELL = "/bin/bash"
# Spares per (user, login) and distinct (user, login) pairs kept.
PER_KEY = 1
MAX_KEYS = 4
# Seconds a command may run before the spare behind it starts anyway.
REFILL_AFTER = 2.0
# Far below a pipe's capacity: the write must never block envd.
MAX_SCRIPT = 16 * 1024
# Read the script up to a NUL from the control descriptor, close it so the
# command does not inherit it, run the script. EOF (envd threw the spare
# away) ends the shell quietly.
BOOT = 'IFS= read -r -d "" -u {fd} __sbx_c || exit 0; exec {fd}<&-; eval "$__sbx_c"'

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Variables bash reads at start or keeps to itself: setting them after the
# profile is not what a fresh shell with them in its environment does.
COLD_NAMES = frozenset({
    "PATH", "HOME", "BASH_ENV", "ENV", "SHELL", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT",
    "BASH_VERSINFO", "EUID", "UID", "PPID", "BASHPID", "GROUPS", "RANDOM", "SRANDOM",
    "SECONDS", "LINENO", "HISTCMD", "FUNCNAME", "DIRSTACK", "PWD", "OLDPWD", "SHLVL",
    "BASH_ARGV0", "EPOCHSECONDS", "EPOCHREALTIME", "BASH_SUBSHELL", "BASH_COMMAND",
    "IFS", "HOSTNAME", "CDPATH", "GLOBIGNORE", "BASH_XTRACEFD", "PS4",
})
# What a login shell reads (or looks for) at start, besides the user's files.
SYSTEM_FILES = ("/etc/profile", "/etc/profile.d", "/etc/bash.bashrc", "/etc/passwd")
USER_FILES = (".bash_profile", ".bash_login", ".profile", ".bashrc", ".bash_aliases",
              "bin", ".local/bin", ".cargo/env")

Key = tuple[str, bool]


def parse(cmd: str, args: list[str]) -> tuple[bool, str] | None:
    """(login, command) when ``cmd args`` is a plain ``bash [-l] -c CMD``."""
    if cmd != SHELL:
        return None
    if len(args) == 3 and args[0] == "-l" and args[1] == "-c":
        return True, args[2]
    if len(args) == 2 and args[0] == "-c":
        return False, args[1]
    return None


def quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def script(command: str, cwd: str, env: Mapping[str, str]) -> bytes | None:
    """The text a spare runs, or None when a spare cannot run it faithfully."""
    for key in env:
        if not NAME.match(key) or key in COLD_NAMES or key.startswith("BASH_FUNC_"):
            return None
    # Line 1 holds both the set-up and the start of the command, so bash's
    # messages about the command give the line numbers `bash -c` would.
    parts = ["unset __sbx_c", f"cd -- {quote(cwd)} || exit 1", "unset OLDPWD"]
    if env:
        parts.append("export " + " ".join(f"{k}={quote(v)}" for k, v in env.items()))
    text = "; ".join(parts) + "; " + command
    if "\0" in text:
        return None
    data = text.encode("utf-8", "surrogateescape") + b"\0"
    return data if len(data) <= MAX_SCRIPT else None


def login_state(user: User) -> tuple[object, ...]:
    """What a starting login shell depends on; a spare started under another
    state would not be the shell a fresh start gives."""
    paths = [*SYSTEM_FILES, *(os.path.join(user.home, p) for p in USER_FILES)]
    with contextlib.suppress(OSError):
        paths += sorted(os.path.join("/etc/profile.d", n) for n in os.listdir("/etc/profile.d"))
    return (os.uname().nodename, user, *(stat_signature(p) for p in paths))


def may_enter(path: str, user: User) -> bool:
    """Whether ``user`` can make ``path`` its working directory (a fresh spawn
    fails with a clean error when it cannot; a spare must not try)."""
    if user.uid == 0:
        return os.path.isdir(path)
    current = "/"
    for part in [p for p in path.split("/") if p] + [""]:
        try:
            st = os.stat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.groups or st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
        if part:
            current = os.path.join(current, part)
    return True


@dataclass(eq=False)
class Spare:
    """One idle shell and the host ends of its pipes."""

    key: Key
    state: tuple[object, ...]
    popen: subprocess.Popen[bytes]
    out_r: int
    err_r: int
    in_w: int
    ctl_w: int
    dead: bool = False
    owner: Callable[[int], None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def on_exit(self, status: int) -> None:
        if self.owner is not None:
            self.owner(status)
        else:
            self.dead = True
            self.popen.returncode = os.waitstatus_to_exitcode(status)
            self.close_fds()

    def start(self, data: bytes, owner: Callable[[int], None]) -> bool:
        """Hand the script over; False when the shell is already gone."""
        self.owner = owner
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.ctl_w, view):]
        except OSError:
            self.owner = None
            return False
        finally:
            os.close(self.ctl_w)
            self.ctl_w = -1
        return True

    def close_fds(self) -> None:
        for name in ("out_r", "err_r", "in_w", "ctl_w"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)

    def discard(self) -> None:
        """Let the shell go: on end-of-file at its control pipe it exits by
        itself once its profile is read. Not killed: a profile interrupted
        half way can leave things behind (pyenv's rehash leaves its lock)."""
        self.close_fds()


Track = Callable[[int, Callable[[int], None]], None]


class WarmShells:
    def __init__(self, track: Track, per_key: int = PER_KEY) -> None:
        self._track = track
        self._per_key = per_key
        self._spares: dict[Key, list[Spare]] = {}
        self._pending: set[Key] = set()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._per_key > 0

    def resize(self, per_key: int) -> None:
        self._per_key = per_key
        for spares in self._spares.values():
            while len(spares) > per_key:
                spares.pop().discard()

    def take(self, key: Key, user: User) -> Spare | None:
        """A live spare for ``key`` started under today's login state."""
        spares = self._spares.get(key, [])
        now = login_state(user) if spares else None
        while spares:
            spare = spares.pop(0)
            if not spare.dead and spare.state == now:
                self.hits += 1
                return spare
            spare.discard()
        self.misses += 1
        return None

    def want(self, key: Key, user: User, env: dict[str, str], cwd: str) -> None:
        """Make sure a spare for ``key`` is on its way (started from the loop
        soon, after the current request has had its turn); idempotent."""
        if not self.enabled or key in self._pending:
            return
        if len(self._spares.get(key, [])) >= self._per_key:
            return
        self._pending.add(key)
        asyncio.get_running_loop().call_soon(self._fill, key, user, env, cwd)

    def _fill(self, key: Key, user: User, env: dict[str, str], cwd: str) -> None:
        self._pending.discard(key)
        spares = self._spares.setdefault(key, [])
        if len(spares) >= self._per_key:
            return
        try:
            spares.append(self._spawn(key, user, env, cwd))
        except OSError as e:
            log.warning("could not start a spare shell for %s: %s", key, e)
            return
        # Least recently wanted users go first.
        self._spares[key] = self._spares.pop(key)
        while len(self._spares) > MAX_KEYS:
            oldest = next(iter(self._spares))
            for spare in self._spares.pop(oldest):
                spare.discard()

    def _spawn(self, key: Key, user: User, env: dict[str, str], cwd: str) -> Spare:
        state = login_state(user)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        argv = [SHELL, *(["-l"] if key[1] else []), "-c", BOOT.format(fd=ctl_r)]
        kwargs: dict[str, Any] = {}
        prefix = drop_to(user)
        if prefix is not None:
            argv = prefix + argv
        elif not user.is_self:
            kwargs.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
        try:
            popen = subprocess.Popen(
                argv, stdin=in_r, stdout=out_w, stderr=err_w, pass_fds=(ctl_r,), cwd=cwd,
                env=env, close_fds=True, start_new_session=True, restore_signals=True,
                **kwargs,
            )
        except BaseException:
            for fd in (out_r, err_r, in_w, ctl_w):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r, ctl_r):
                os.close(fd)
        spare = Spare(key, state, popen, out_r, err_r, in_w, ctl_w)
        self._track(popen.pid, spare.on_exit)
        return spare

    def close(self) -> None:
        for spares in self._spares.values():
            for spare in spares:
                spare.discard()
        self._spares.clear()
