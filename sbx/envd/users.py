"""System users: lookup, credentials for children, per-user path resolution."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]

    @property
    def is_self(self) -> bool:
        """Whether envd already runs with this user's ids (no switch needed)."""
        return self.uid == os.geteuid() and self.gid == os.getegid()

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


class UnknownUser(LookupError):
    pass


def _from_pw(pw: pwd.struct_passwd) -> User:
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        groups = (pw.pw_gid,)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/", groups)


# Looking a user up reads /etc/passwd and /etc/group through NSS: a few
# milliseconds under gVisor, on every request. Kept while both files are
# unchanged.
_DB_FILES = ("/etc/passwd", "/etc/group")
_cache: dict[str, User] = {}
_cache_sig: tuple[object, ...] = ()


def stat_signature(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is written or replaced (None: not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _db_signature() -> tuple[object, ...]:
    return tuple(stat_signature(path) for path in _DB_FILES)


def lookup(name: str) -> User:
    _fresh_cache()
    user = _cache.get(name)
    if user is None:
        try:
            user = _from_pw(pwd.getpwnam(name))
        except KeyError:
            raise UnknownUser(name) from None
        _cache[name] = user
    return user


SETPRIV = "/usr/bin/setpriv"


def drop_to(user: User) -> list[str] | None:
    """argv prefix that runs a program as ``user``, or None to let Popen
    switch ids. Popen can only vfork when it switches no ids; otherwise it
    forks all of envd, which under gVisor costs ~50 ms a process. setpriv
    switches after a cheap vfork."""
    if user.is_self or os.geteuid() != 0 or not os.access(SETPRIV, os.X_OK):
        return None
    groups = ",".join(str(g) for g in user.groups) or str(user.gid)
    return [SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", f"--groups={groups}", "--"]


def _fresh_cache() -> None:
    global _cache_sig
    sig = _db_signature()
    if sig != _cache_sig:
        _cache.clear()
        _cache_sig = sig


def current() -> User:
    """The user envd runs as (root inside a sandbox)."""
    _fresh_cache()
    uid = os.geteuid()
    key = f"#{uid}"
    user = _cache.get(key)
    if user is None:
        try:
            user = _from_pw(pwd.getpwuid(uid))
        except KeyError:
            home = os.environ.get("HOME", "/")
            user = User(str(uid), uid, os.getegid(), home, (os.getegid(),))
        _cache[key] = user
    return user


def lookup_spec(spec: str) -> User:
    """A Dockerfile USER: ``user[:group]``, each a name or a numeric id.

    As in Docker, a numeric uid needs no passwd entry (then its group is 0
    and its home ``/``), and an explicit group is the only group: it
    replaces the primary one and drops the supplementary ones."""
    _fresh_cache()
    key = ":spec:" + spec
    user = _cache.get(key)
    if user is None:
        user = _from_spec(spec)
        _cache[key] = user
    return user


def _from_spec(spec: str) -> User:
    name, _, group = spec.partition(":")
    if name.isdigit():
        try:
            user = _from_pw(pwd.getpwuid(int(name)))
        except KeyError:
            user = User(name, int(name), 0, "/", (0,))
    else:
        try:
            user = _from_pw(pwd.getpwnam(name))
        except KeyError:
            raise UnknownUser(spec) from None
    if not group:
        return user
    if group.isdigit():
        gid = int(group)
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UnknownUser(spec) from None
    return replace(user, gid=gid, groups=(gid,))


def resolve(
    username: str | None, default_user: str | None, template_user: str | None = None
) -> User:
    """The user a request acts as: the named one, else the template's USER,
    else /init's default, else envd's own. The template's wins over /init's
    because the E2B surface always sends defaultUser "user", which must not
    hide a template's USER."""
    if username:
        return lookup(username)
    if template_user:
        return lookup_spec(template_user)
    return lookup(default_user) if default_user else current()


def expand_path(path: str, user: User, default_workdir: str | None = None) -> str:
    """Absolute, normalised path; ``~`` and relative paths are the user's home.

    An empty path means the default working directory (or the home).
    """
    if not path:
        path = default_workdir or ""
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    elif path.startswith("~"):
        raise ValueError(f"cannot expand user-specific home dir in {path!r}")
    if not os.path.isabs(path):
        path = os.path.join(user.home, path)
    return os.path.normpath(path)


def can_chown() -> bool:
    return os.geteuid() == 0


def chown(path: str, user: User, *, follow: bool = True) -> None:
    """Give ``path`` to ``user`` when envd has the right to (it does as root)."""
    if can_chown() or user.is_self:
        os.chown(path, user.uid, user.gid, follow_symlinks=follow)


def ensure_dirs(path: str, user: User) -> None:
    """``mkdir -p`` where every directory created belongs to ``user``."""
    missing: list[str] = []
    current_path = path
    while not os.path.isdir(current_path):
        if os.path.lexists(current_path):
            raise NotADirectoryError(f"path is a file: {current_path}")
        missing.append(current_path)
        parent = os.path.dirname(current_path)
        if parent == current_path:
            break
        current_path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        chown(directory, user)


def user_name(uid: int, cache: dict[int, str]) -> str:
    name = cache.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        cache[uid] = name
    return name


def group_name(gid: int, cache: dict[int, str]) -> str:
    name = cache.get(gid)
    if name is None:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        cache[gid] = name
    return name
