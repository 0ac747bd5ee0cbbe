"""The Dockerfile subset that custom templates are built from: a pure parser
and validator (no I/O, no Docker), and the layer-cache keys of its steps.

`parse` turns the text into a `Dockerfile`: its ordered instructions (each
with the 1-based line it starts on, its `kind` and typed, already resolved
fields) and the final state (base, env, workdir, user, cmd, entrypoint).
Anything outside the subset is a `DockerfileError` naming the line.
See docs/templates-dockerfile.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_BYTES = 1024 * 1024
MAX_INSTRUCTIONS = 1000
# The marker every accepted Debian 12 spelling (debian:12, debian:bookworm,
# and their -slim variants) is normalised to. A template name never holds a
# colon, so it cannot collide with one.
DEBIAN_12 = "debian:12"
SHELL = ("/bin/sh", "-c")

TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEBIAN_IMAGES = frozenset(
    f"debian:{tag}{suffix}" for tag in ("12", "bookworm") for suffix in ("", "-slim")
)
UNSUPPORTED = frozenset({
    "EXPOSE", "VOLUME", "HEALTHCHECK", "ONBUILD", "STOPSIGNAL", "SHELL", "LABEL", "MAINTAINER",
})
SUPPORTED = frozenset({
    "FROM", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "ARG", "CMD", "ENTRYPOINT",
})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTINUATION = re.compile(r"\\[ \t]*$")
_INSTRUCTION = re.compile(r"\s*(\S+)(?:\s+(.*))?", re.DOTALL)
_OWNER_PART = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_OWNER = re.compile(rf"{_OWNER_PART}(?::{_OWNER_PART})?")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class DockerfileError(ValueError):
    """A Dockerfile outside the supported subset. `line` is 1-based; 0 means
    the file as a whole (too large, no FROM at all)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(line, message)
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


# -- instructions -------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    kind: str


@dataclass(frozen=True)
class From(Instruction):
    image: str  # as written, after ARG substitution
    base: str  # DEBIAN_12 or a template name


@dataclass(frozen=True)
class Run(Instruction):
    argv: tuple[str, ...]  # shell form: ("/bin/sh", "-c", text)
    shell: bool
    # ARG values in scope (not shadowed by ENV): the builder adds them to this
    # step's environment, as Docker does; they are part of its cache key.
    args: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Copy(Instruction):  # kind "COPY" or "ADD"
    sources: tuple[str, ...]  # normalised, relative to the build context
    dest: str  # absolute; a trailing "/" means "into this directory"
    chown: str | None


@dataclass(frozen=True)
class Env(Instruction):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Workdir(Instruction):
    path: str  # absolute, normalised


@dataclass(frozen=True)
class User(Instruction):
    user: str  # user[:group]


@dataclass(frozen=True)
class Arg(Instruction):
    # (name, value): the build arg, else the default, else None (unset).
    values: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class Command(Instruction):  # kind "CMD" or "ENTRYPOINT"
    argv: tuple[str, ...]  # shell form: ("/bin/sh", "-c", text); () clears it
    shell: bool


@dataclass(frozen=True)
class Dockerfile:
    instructions: tuple[Instruction, ...]
    base: str
    env: tuple[tuple[str, str], ...]  # final, in first-definition order
    workdir: str | None  # None: the base's own
    user: str | None
    cmd: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None


# -- lines --------------------------------------------------------------------------


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) of every instruction: comments and
    blank lines dropped, continuations joined (backslash and newline removed,
    comment lines inside a continuation skipped, as Docker does)."""
    lines = text.split("\n")
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        start, current = i + 1, lines[i].rstrip("\r")
        i += 1
        if not current.strip() or current.lstrip().startswith("#"):
            continue
        parts: list[str] = []
        while (m := _CONTINUATION.search(current)) is not None:
            parts.append(current[: m.start()])
            while True:
                if i >= len(lines):
                    raise DockerfileError(start, "unterminated line continuation at end of file")
                current = lines[i].rstrip("\r")
                i += 1
                stripped = current.strip()
                if stripped and not stripped.startswith("#"):
                    break
        parts.append(current)
        out.append((start, "".join(parts)))
    return out


# -- substitution and words ---------------------------------------------------------

Lookup = Callable[[str], str]


def _dollar(text: str, i: int, lookup: Lookup, line: int) -> tuple[str, int]:
    """Expand the `$` at text[i]: $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word}.
    Unset variables are empty. Returns (expansion, index after it)."""
    if text.startswith("${", i):
        depth, j = 1, i + 2
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        if depth:
            raise DockerfileError(line, f"unterminated substitution {text[i:]!r}")
        inner = text[i + 2 : j - 1]
        m = _NAME.match(inner)
        if m is None:
            raise DockerfileError(line, f"bad substitution {text[i:j]!r}")
        value, rest = lookup(m.group()), inner[m.end():]
        if rest == "":
            return value, j
        if rest.startswith(":-"):
            return (value or _word(rest[2:], lookup, line)), j
        if rest.startswith(":+"):
            return (_word(rest[2:], lookup, line) if value else ""), j
        raise DockerfileError(line, f"bad substitution {text[i:j]!r}")
    m = _NAME.match(text, i + 1)
    if m is None:
        return "$", i + 1
    return lookup(m.group()), m.end()


def _words(text: str, lookup: Lookup, line: int, *, split: bool = True) -> list[str]:
    """Shell-like words of `text`: whitespace separates words (unless
    split=False), '...' is literal, "..." substitutes, a backslash escapes
    the next character, $VAR and ${VAR...} substitute (not word-split)."""
    words: list[str] = []
    cur: list[str] = []
    have = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if split and c.isspace():
            if have:
                words.append("".join(cur))
                cur, have = [], False
            i += 1
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise DockerfileError(line, "unterminated single quote")
            cur.append(text[i + 1 : j])
            have, i = True, j + 1
        elif c == '"':
            have, i = True, i + 1
            while True:
                if i >= n:
                    raise DockerfileError(line, "unterminated double quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    cur.append(text[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _dollar(text, i, lookup, line)
                    cur.append(value)
                else:
                    cur.append(c)
                    i += 1
        elif c == "\\":
            cur.append(text[i + 1] if i + 1 < n else "\\")
            have, i = True, i + 2
        elif c == "$":
            value, i = _dollar(text, i, lookup, line)
            cur.append(value)
            have = have or value != ""
        else:
            cur.append(c)
            have, i = True, i + 1
    if have:
        words.append("".join(cur))
    return words


def _word(text: str, lookup: Lookup, line: int) -> str:
    return "".join(_words(text, lookup, line, split=False))


def _json_form(kind: str, args: str, line: int) -> list[str] | None:
    """The argv of a JSON (exec) form, None for the shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DockerfileError(line, f"{kind}: malformed JSON form (expected a list of strings)")
    return value


# -- the parser ---------------------------------------------------------------------


class _State:
    def __init__(self, build_args: Mapping[str, str]) -> None:
        self.build_args = build_args
        self.global_args: dict[str, str | None] = {}  # ARGs before FROM
        self.args: dict[str, str | None] = {}  # ARGs of the stage (after FROM)
        self.env: dict[str, str] = {}
        self.base: str | None = None
        self.workdir: str | None = None
        self.user: str | None = None
        self.cmd: tuple[str, ...] | None = None
        self.entrypoint: tuple[str, ...] | None = None

    def lookup(self, name: str) -> str:
        if name in self.env:
            return self.env[name]
        scope = self.args if self.base is not None else self.global_args
        return scope.get(name) or ""

    def run_args(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (k, v) for k, v in self.args.items() if v is not None and k not in self.env
        )

    def resolve(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.workdir or "/", path))


def parse(text: str, build_args: Mapping[str, str] | None = None) -> Dockerfile:
    """Parse and validate a Dockerfile of the supported subset; raises
    DockerfileError (with the line) on anything else."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise DockerfileError(0, "Dockerfile is larger than 1 MiB")
    state = _State(build_args or {})
    instructions: list[Instruction] = []
    for line, logical in _logical_lines(text.removeprefix("\ufeff")):
        m = _INSTRUCTION.fullmatch(logical)
        assert m is not None  # a logical line is never blank
        kind, args = m.group(1).upper(), (m.group(2) or "").strip()
        if kind in UNSUPPORTED:
            raise DockerfileError(line, f"{kind} is not supported")
        if kind not in SUPPORTED:
            raise DockerfileError(line, f"unknown instruction {m.group(1)}")
        if len(instructions) >= MAX_INSTRUCTIONS:
            raise DockerfileError(line, f"more than {MAX_INSTRUCTIONS} instructions")
        if state.base is None and kind not in ("FROM", "ARG"):
            raise DockerfileError(
                line, f"{kind} before FROM: FROM must be the first instruction (after ARG)")
        if not args:
            raise DockerfileError(line, f"{kind} needs arguments")
        instructions.append(_PARSERS[kind](state, line, kind, args))
    if state.base is None:
        raise DockerfileError(0, "no FROM instruction")
    return Dockerfile(
        instructions=tuple(instructions),
        base=state.base,
        env=tuple(state.env.items()),
        workdir=state.workdir,
        user=state.user,
        cmd=state.cmd,
        entrypoint=state.entrypoint,
    )


def _from(state: _State, line: int, kind: str, args: str) -> Instruction:
    if state.base is not None:
        raise DockerfileError(line, "a second FROM: multi-stage builds are not supported")
    if args.startswith("--"):
        raise DockerfileError(line, f"FROM flag {args.split()[0]} is not supported")
    words = _words(args, state.lookup, line)
    if len(words) == 3 and words[1].lower() == "as":
        raise DockerfileError(line, "FROM ... AS: multi-stage builds are not supported")
    if len(words) != 1:
        raise DockerfileError(line, "FROM takes exactly one image")
    image = words[0]
    if image in DEBIAN_IMAGES:
        base = DEBIAN_12
    elif TEMPLATE_NAME.fullmatch(image):
        base = image
    else:
        raise DockerfileError(
            line,
            f"FROM {image!r}: unsupported base (use base, a template name or debian:12)",
        )
    state.base = base
    return From(line, kind, image, base)


def _run(state: _State, line: int, kind: str, args: str) -> Instruction:
    argv = _json_form(kind, args, line)
    if argv is not None:
        if not argv:
            raise DockerfileError(line, "RUN needs a command")
        return Run(line, kind, tuple(argv), False, state.run_args())
    if args.startswith("--"):
        raise DockerfileError(line, f"RUN flag {args.split()[0].split('=')[0]} is not supported")
    return Run(line, kind, (*SHELL, args), True, state.run_args())


def _copy(state: _State, line: int, kind: str, args: str) -> Instruction:
    chown: str | None = None
    while args.startswith("--"):
        flag, *tail = args.split(maxsplit=1)
        args = tail[0] if tail else ""
        name, eq, value = flag.partition("=")
        if name != "--chown":
            raise DockerfileError(line, f"{kind} flag {name} is not supported")
        chown = _word(value, state.lookup, line)
        if not eq or not _OWNER.fullmatch(chown):
            raise DockerfileError(line, f"{kind} --chown needs user[:group], got {chown!r}")
    argv = _json_form(kind, args, line)
    if argv is not None:
        words = [_word(w, state.lookup, line) for w in argv]
    else:
        words = _words(args, state.lookup, line)
    if len(words) < 2:
        raise DockerfileError(line, f"{kind} needs at least one source and a destination")
    sources = tuple(_source(kind, s, line) for s in words[:-1])
    dest = words[-1]
    if not dest:
        raise DockerfileError(line, f"{kind}: empty destination")
    into_dir = dest.endswith("/") or posixpath.basename(dest) in (".", "..")
    if len(sources) > 1 and not dest.endswith("/"):
        raise DockerfileError(
            line, f"{kind} with several sources needs a destination ending with /")
    resolved = state.resolve(dest)
    if into_dir and resolved != "/":
        resolved += "/"
    return Copy(line, kind, sources, resolved, chown)


def _source(kind: str, source: str, line: int) -> str:
    if kind == "ADD" and (_URL.match(source) or source.startswith("git@")):
        raise DockerfileError(line, f"ADD from a URL is not supported: {source!r}")
    if not source:
        raise DockerfileError(line, f"{kind}: empty source")
    if source.startswith("/"):
        raise DockerfileError(
            line, f"{kind} source {source!r} must be relative to the build context")
    normal = posixpath.normpath(source)
    if normal == ".." or normal.startswith("../"):
        raise DockerfileError(line, f"{kind} source {source!r} is outside the build context")
    return normal


def _env(state: _State, line: int, kind: str, args: str) -> Instruction:
    head = re.split(r"\s", args, maxsplit=1)
    pairs: list[tuple[str, str]] = []
    if "=" not in head[0]:  # legacy: ENV KEY value with spaces
        if len(head) < 2 or not head[1].strip():
            raise DockerfileError(line, f"ENV {head[0]} needs a value")
        pairs.append((head[0], _word(head[1].strip(), state.lookup, line)))
    else:
        for word in _words(args, state.lookup, line):
            key, eq, value = word.partition("=")
            if not eq:
                raise DockerfileError(line, f"ENV {word!r}: expected KEY=value")
            pairs.append((key, value))
    for key, _ in pairs:
        if not _NAME.fullmatch(key):
            raise DockerfileError(line, f"ENV: invalid variable name {key!r}")
    state.env.update(pairs)  # after all of them: one ENV sees the values before it
    return Env(line, kind, tuple(pairs))


def _workdir(state: _State, line: int, kind: str, args: str) -> Instruction:
    path = _word(args, state.lookup, line)
    if not path:
        raise DockerfileError(line, "WORKDIR needs a path")
    state.workdir = state.resolve(path)
    return Workdir(line, kind, state.workdir)


def _user(state: _State, line: int, kind: str, args: str) -> Instruction:
    words = _words(args, state.lookup, line)
    if len(words) != 1 or not _OWNER.fullmatch(words[0]):
        raise DockerfileError(line, f"USER needs user[:group], got {args!r}")
    state.user = words[0]
    return User(line, kind, words[0])


def _arg(state: _State, line: int, kind: str, args: str) -> Instruction:
    values: list[tuple[str, str | None]] = []
    for word in _words(args, state.lookup, line):
        name, eq, default = word.partition("=")
        if not _NAME.fullmatch(name):
            raise DockerfileError(line, f"ARG: invalid name {name!r}")
        value: str | None
        if name in state.build_args:
            value = state.build_args[name]
        elif eq:
            value = default
        elif state.base is not None:  # a global ARG redeclared after FROM
            value = state.global_args.get(name)
        else:
            value = None
        values.append((name, value))
    for name, value in values:
        (state.args if state.base is not None else state.global_args)[name] = value
    return Arg(line, kind, tuple(values))


def _command(state: _State, line: int, kind: str, args: str) -> Instruction:
    argv = _json_form(kind, args, line)
    shell = argv is None
    final = (*SHELL, args) if argv is None else tuple(argv)
    if kind == "CMD":
        state.cmd = final or None
    else:
        state.entrypoint = final or None
    return Command(line, kind, final, shell)


_PARSERS: dict[str, Callable[[_State, int, str, str], Instruction]] = {
    "FROM": _from,
    "RUN": _run,
    "COPY": _copy,
    "ADD": _copy,
    "ENV": _env,
    "WORKDIR": _workdir,
    "USER": _user,
    "ARG": _arg,
    "CMD": _command,
    "ENTRYPOINT": _command,
}


# -- cache keys ---------------------------------------------------------------------


def canonical(instruction: Instruction) -> str:
    """The instruction as it affects the result: every field but the line,
    so moving an instruction or adding a comment keeps its cache key."""
    fields = dataclasses.asdict(instruction)
    del fields["line"]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_keys(
    dockerfile: Dockerfile,
    context_digests: Mapping[str, str],
    *,
    base_digest: str = "",
) -> list[str]:
    """One key per instruction: a SHA-256 chain over the base (and
    `base_digest`, the identity of the base's current build, when known),
    each instruction's canonical form and, for COPY/ADD, the digests of its
    sources (context_digests: normalised source path → content digest).
    Changing instruction N changes keys N.. and none before."""
    chain = hashlib.sha256(
        f"sbx-template-layer/v1\0{dockerfile.base}\0{base_digest}".encode()).hexdigest()
    keys: list[str] = []
    for instruction in dockerfile.instructions:
        h = hashlib.sha256(f"{chain}\0{canonical(instruction)}".encode())
        if isinstance(instruction, Copy):
            for source in instruction.sources:
                if source not in context_digests:
                    raise KeyError(
                        f"line {instruction.line}: no digest for {instruction.kind} "
                        f"source {source!r}")
                h.update(f"\0{source}\0{context_digests[source]}".encode())
        chain = h.hexdigest()
        keys.append(chain)
    return keys
