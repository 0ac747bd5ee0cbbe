"""The Dockerfile subset parser of custom templates: pure, no I/O."""

from __future__ import annotations

import pytest

from sbx.templates_build.dockerfile import (
    DEBIAN_12,
    Arg,
    Command,
    Copy,
    Dockerfile,
    DockerfileError,
    Env,
    From,
    Run,
    User,
    Workdir,
    cache_keys,
    parse,
)


def fails(text: str, line: int, message: str, build_args: dict[str, str] | None = None) -> None:
    with pytest.raises(DockerfileError) as info:
        parse(text, build_args)
    assert info.value.line == line
    assert info.value.message == message
    assert str(info.value) == (f"line {line}: {message}" if line else message)


# -- a full file --------------------------------------------------------------------

FULL = """\
# syntax comment
ARG VERSION=12

from debian:${VERSION}
ARG PIP_INDEX
ENV LANG=C.UTF-8 GREETING="hello world"
ENV LEGACY some value here
WORKDIR /srv
WORKDIR app
COPY --chown=app:app requirements.txt ./
ADD src/ /opt/src/
RUN pip install -r requirements.txt && \\
    # a comment inside a continuation
    rm -rf /root/.cache
RUN ["python3", "-m", "compileall", "/opt/src"]
USER app
ENTRYPOINT ["tini", "--"]
CMD python3 -m app
"""


def test_full_file() -> None:
    d = parse(FULL, {"PIP_INDEX": "https://pypi.example"})
    assert isinstance(d, Dockerfile)
    assert d.base == DEBIAN_12
    assert d.env == (("LANG", "C.UTF-8"), ("GREETING", "hello world"),
                     ("LEGACY", "some value here"))
    assert d.workdir == "/srv/app"
    assert d.user == "app"
    assert d.entrypoint == ("tini", "--")
    assert d.cmd == ("/bin/sh", "-c", "python3 -m app")
    assert [(i.line, i.kind) for i in d.instructions] == [
        (2, "ARG"), (4, "FROM"), (5, "ARG"), (6, "ENV"), (7, "ENV"), (8, "WORKDIR"),
        (9, "WORKDIR"), (10, "COPY"), (11, "ADD"), (12, "RUN"), (15, "RUN"), (16, "USER"),
        (17, "ENTRYPOINT"), (18, "CMD"),
    ]
    assert d.instructions[1] == From(4, "FROM", "debian:12", DEBIAN_12)
    assert d.instructions[7] == Copy(10, "COPY", ("requirements.txt",), "/srv/app/", "app:app")
    assert d.instructions[8] == Copy(11, "ADD", ("src",), "/opt/src/", None)
    assert d.instructions[9] == Run(
        12, "RUN",
        ("/bin/sh", "-c", "pip install -r requirements.txt &&     rm -rf /root/.cache"),
        True, (("PIP_INDEX", "https://pypi.example"),))
    assert d.instructions[10] == Run(
        15, "RUN", ("python3", "-m", "compileall", "/opt/src"), False,
        (("PIP_INDEX", "https://pypi.example"),))


def test_minimal_defaults() -> None:
    d = parse("FROM base\n")
    assert d.base == "base"
    assert d.instructions == (From(1, "FROM", "base", "base"),)
    assert (d.env, d.workdir, d.user, d.cmd, d.entrypoint) == ((), None, None, None, None)


def test_instruction_names_are_case_insensitive() -> None:
    d = parse("from base\nRuN true\nworkdir /x\nCmd [\"a\"]\n")
    assert [i.kind for i in d.instructions] == ["FROM", "RUN", "WORKDIR", "CMD"]
    assert d.cmd == ("a",)


def test_crlf_and_bom() -> None:
    d = parse("\ufeffFROM base\r\nRUN a \\\r\n  b\r\n")
    assert d.instructions[1] == Run(2, "RUN", ("/bin/sh", "-c", "a   b"), True, ())


# -- FROM ---------------------------------------------------------------------------


@pytest.mark.parametrize("image", [
    "debian:12", "debian:bookworm", "debian:12-slim", "debian:bookworm-slim",
])
def test_from_debian_spellings(image: str) -> None:
    d = parse(f"FROM {image}\n")
    assert d.base == DEBIAN_12
    assert d.instructions[0] == From(1, "FROM", image, DEBIAN_12)


# A bare `debian` is a template name (it matches the rule), not the image.
@pytest.mark.parametrize("name", ["base", "my-template", "0", "a" * 63, "py3-11", "debian"])
def test_from_template_names(name: str) -> None:
    assert parse(f"FROM {name}").base == name


@pytest.mark.parametrize("image", [
    "ubuntu:22.04", "debian:11", "debian:latest", "Base", "-x", "a" * 64, "library/debian:12",
    "my_template", "debian:12@sha256:abc",
])
def test_from_refuses_other_images(image: str) -> None:
    fails(f"# c\nFROM {image}\n", 2,
          f"FROM {image!r}: unsupported base (use base, a template name or debian:12)")


def test_from_errors() -> None:
    fails("FROM base AS build\n", 1, "FROM ... AS: multi-stage builds are not supported")
    fails("FROM base as build\n", 1, "FROM ... AS: multi-stage builds are not supported")
    fails("FROM base\nRUN x\nFROM base\n", 3,
          "a second FROM: multi-stage builds are not supported")
    fails("FROM --platform=linux/amd64 base\n", 1, "FROM flag --platform=linux/amd64 "
          "is not supported")
    fails("FROM base other\n", 1, "FROM takes exactly one image")
    fails("FROM\n", 1, "FROM needs arguments")


def test_missing_from() -> None:
    fails("", 0, "no FROM instruction")
    fails("# only a comment\n\n", 0, "no FROM instruction")
    fails("ARG A=1\n", 0, "no FROM instruction")
    fails("ARG A=1\nRUN true\nFROM base\n", 2,
          "RUN before FROM: FROM must be the first instruction (after ARG)")


def test_from_uses_args_before_it() -> None:
    text = "ARG BASE=base\nFROM ${BASE}\n"
    assert parse(text).base == "base"
    assert parse(text, {"BASE": "custom"}).base == "custom"
    assert parse("ARG T=bookworm\nFROM debian:$T-slim\n").base == DEBIAN_12


# -- RUN ----------------------------------------------------------------------------


def test_run_forms() -> None:
    d = parse('FROM base\nRUN echo "$HOME" > /x\nRUN ["/bin/echo", "a b"]\n')
    # The shell form is not substituted by the parser: the shell does it.
    assert d.instructions[1] == Run(2, "RUN", ("/bin/sh", "-c", 'echo "$HOME" > /x'), True, ())
    assert d.instructions[2] == Run(3, "RUN", ("/bin/echo", "a b"), False, ())


def test_run_errors() -> None:
    fails("FROM base\nRUN\n", 2, "RUN needs arguments")
    fails("FROM base\nRUN   \n", 2, "RUN needs arguments")
    fails("FROM base\nRUN []\n", 2, "RUN needs a command")
    fails('FROM base\nRUN ["a", \n', 2, "RUN: malformed JSON form (expected a list of strings)")
    fails('FROM base\nRUN ["a", 1]\n', 2,
          "RUN: malformed JSON form (expected a list of strings)")
    fails("FROM base\nRUN ['a']\n", 2, "RUN: malformed JSON form (expected a list of strings)")
    fails("FROM base\nRUN --mount=type=cache,target=/x true\n", 2,
          "RUN flag --mount is not supported")


def test_run_sees_args_in_scope_not_shadowed_by_env() -> None:
    d = parse("FROM base\nARG A=1\nARG B\nARG C=3\nENV C=env\nRUN x\n")
    run = d.instructions[-1]
    assert isinstance(run, Run)
    assert run.args == (("A", "1"),)  # B unset, C shadowed by ENV


# -- COPY / ADD ---------------------------------------------------------------------


def test_copy_forms_and_destinations() -> None:
    d = parse(
        "FROM base\n"
        "COPY a b\n"
        "COPY a/../c ./d/ /dst/\n"
        'COPY ["with space", "/opt/dir/"]\n'
        "WORKDIR /w\n"
        "COPY . .\n"
        "COPY f rel/name\n"
        "COPY f /\n"
    )
    copies = [i for i in d.instructions if isinstance(i, Copy)]
    assert copies == [
        Copy(2, "COPY", ("a",), "/b", None),
        Copy(3, "COPY", ("c", "d"), "/dst/", None),
        Copy(4, "COPY", ("with space",), "/opt/dir/", None),
        Copy(6, "COPY", (".",), "/w/", None),
        Copy(7, "COPY", ("f",), "/w/rel/name", None),
        Copy(8, "COPY", ("f",), "/", None),
    ]


def test_copy_chown() -> None:
    d = parse("FROM base\nARG U=app\nCOPY --chown=$U a /a\nADD --chown=1000:1000 b /b\n")
    assert d.instructions[2] == Copy(3, "COPY", ("a",), "/a", "app")
    assert d.instructions[3] == Copy(4, "ADD", ("b",), "/b", "1000:1000")


@pytest.mark.parametrize(("line", "message"), [
    ("COPY", "COPY needs arguments"),
    ("COPY onlyone", "COPY needs at least one source and a destination"),
    ('COPY ["onlyone"]', "COPY needs at least one source and a destination"),
    ('COPY ["a", ', "COPY: malformed JSON form (expected a list of strings)"),
    ("COPY --from=build /a /b", "COPY flag --from is not supported"),
    ("COPY --chmod=755 a /b", "COPY flag --chmod is not supported"),
    ("ADD --checksum=sha256:0 a /b", "ADD flag --checksum is not supported"),
    ("COPY --chown a /b", "COPY --chown needs user[:group], got ''"),
    ("COPY --chown=a:b:c a /b", "COPY --chown needs user[:group], got 'a:b:c'"),
    ("COPY /etc/passwd /x", "COPY source '/etc/passwd' must be relative to the build context"),
    ("COPY ../secret /x", "COPY source '../secret' is outside the build context"),
    ("COPY a/../../secret /x", "COPY source 'a/../../secret' is outside the build context"),
    ("COPY .. /x", "COPY source '..' is outside the build context"),
    ("ADD ./../x /x", "ADD source './../x' is outside the build context"),
    ("ADD https://example.com/a.tgz /x", "ADD from a URL is not supported: "
     "'https://example.com/a.tgz'"),
    ("ADD git@github.com:a/b.git /x", "ADD from a URL is not supported: "
     "'git@github.com:a/b.git'"),
    ("COPY a b /x", "COPY with several sources needs a destination ending with /"),
    ("COPY $NOPE /x", "COPY needs at least one source and a destination"),
])
def test_copy_errors(line: str, message: str) -> None:
    fails(f"FROM base\n\n{line}\n", 3, message)


def test_copy_keeps_dotdot_that_stays_inside() -> None:
    d = parse("FROM base\nCOPY a/b/../c ./x/./y /d/\n")
    assert d.instructions[1] == Copy(2, "COPY", ("a/c", "x/y"), "/d/", None)


# -- ENV, ARG and substitution -------------------------------------------------------


def test_env_forms() -> None:
    d = parse(
        "FROM base\n"
        "ENV A=1 B=\"two words\" C='$literal' D=a\\ b E=\n"
        "ENV F  spaced  value \n"
        "ENV G=${A}x H=$B\n"
        "ENV A=2 I=$A\n"
    )
    assert d.instructions[1] == Env(2, "ENV", (
        ("A", "1"), ("B", "two words"), ("C", "$literal"), ("D", "a b"), ("E", "")))
    assert d.instructions[2] == Env(3, "ENV", (("F", "spaced  value"),))
    assert d.instructions[3] == Env(4, "ENV", (("G", "1x"), ("H", "two words")))
    # One ENV sees the values from before it (Docker behaviour).
    assert d.instructions[4] == Env(5, "ENV", (("A", "2"), ("I", "1")))
    assert dict(d.env) == {"A": "2", "B": "two words", "C": "$literal", "D": "a b", "E": "",
                           "F": "spaced  value", "G": "1x", "H": "two words", "I": "1"}


@pytest.mark.parametrize(("line", "message"), [
    ("ENV", "ENV needs arguments"),
    ("ENV ONLYKEY", "ENV ONLYKEY needs a value"),
    ("ENV A=1 B", "ENV 'B': expected KEY=value"),
    ("ENV 1A=1", "ENV: invalid variable name '1A'"),
    ("ENV A-B value", "ENV: invalid variable name 'A-B'"),
    ('ENV A="unterminated', "unterminated double quote"),
    ("ENV A='unterminated", "unterminated single quote"),
])
def test_env_errors(line: str, message: str) -> None:
    fails(f"FROM base\n{line}\n", 2, message)


def test_arg_defaults_and_build_args() -> None:
    text = "FROM base\nARG A=default B C=\"x y\"\nENV OUT=$A-$B-$C\n"
    d = parse(text)
    assert d.instructions[1] == Arg(2, "ARG", (("A", "default"), ("B", None), ("C", "x y")))
    assert dict(d.env)["OUT"] == "default--x y"
    d = parse(text, {"A": "given", "B": "b", "UNDECLARED": "ignored"})
    assert d.instructions[1] == Arg(2, "ARG", (("A", "given"), ("B", "b"), ("C", "x y")))
    assert dict(d.env)["OUT"] == "given-b-x y"


def test_arg_used_before_definition_is_empty() -> None:
    d = parse("FROM base\nENV X=[$LATER]\nARG LATER=1\nENV Y=[$LATER]\n", {"LATER": "2"})
    assert dict(d.env) == {"X": "[]", "Y": "[2]"}


def test_global_arg_needs_redeclaring_after_from() -> None:
    d = parse("ARG V=1\nFROM base\nENV A=[$V]\nARG V\nENV B=[$V]\n")
    assert dict(d.env) == {"A": "[]", "B": "[1]"}


def test_env_overrides_arg() -> None:
    d = parse("FROM base\nENV X=env\nARG X=arg\nENV Y=$X\n")
    assert dict(d.env)["Y"] == "env"


def test_arg_errors() -> None:
    fails("FROM base\nARG 9x=1\n", 2, "ARG: invalid name '9x'")
    fails("FROM base\nARG\n", 2, "ARG needs arguments")


@pytest.mark.parametrize(("value", "expected"), [
    ("$A", "a"),
    ("${A}", "a"),
    ("${A}b", "ab"),
    ("$Ab", ""),  # the name is Ab
    ("${NOPE:-fallback}", "fallback"),
    ("${EMPTY:-fallback}", "fallback"),
    ("${A:-fallback}", "a"),
    ("${NOPE:-$A/x}", "a/x"),
    ("${NOPE:-${A}}", "a"),
    ("${A:+set}", "set"),
    ("${NOPE:+set}", ""),
    ("\\$A", "$A"),
    ("'$A'", "$A"),
    ('"$A b"', "a b"),
    ('"\\$A"', "$A"),
    ("$", "$"),
    ("cost$5", "cost$5"),
])
def test_substitution(value: str, expected: str) -> None:
    d = parse(f"FROM base\nARG A=a\nARG EMPTY=\nENV R={value}\n")
    assert dict(d.env)["R"] == expected


def test_substitution_errors() -> None:
    fails("FROM base\nENV A=${B\n", 2, "unterminated substitution '${B'")
    fails("FROM base\nENV A=${B?err}\n", 2, "bad substitution '${B?err}'")
    fails("FROM base\nENV A=${}\n", 2, "bad substitution '${}'")


def test_substitution_in_workdir_user_and_copy() -> None:
    d = parse(
        "FROM base\nARG DIR=/opt/app\nARG WHO=svc\nARG SRC=src\n"
        "WORKDIR $DIR\nUSER ${WHO}:${GROUP:-svc}\nCOPY ${SRC}/main.py ./\n"
    )
    assert d.instructions[4] == Workdir(5, "WORKDIR", "/opt/app")
    assert d.instructions[5] == User(6, "USER", "svc:svc")
    assert d.instructions[6] == Copy(7, "COPY", ("src/main.py",), "/opt/app/", None)


def test_cmd_and_entrypoint_are_not_substituted() -> None:
    d = parse("FROM base\nARG A=1\nCMD echo $A\n")
    assert d.cmd == ("/bin/sh", "-c", "echo $A")


# -- WORKDIR, USER, CMD, ENTRYPOINT --------------------------------------------------


def test_workdir_resolution() -> None:
    d = parse("FROM base\nWORKDIR a\nWORKDIR b/../c\nWORKDIR ../..\nWORKDIR \"/x y\"\n")
    paths = [i.path for i in d.instructions if isinstance(i, Workdir)]
    assert paths == ["/a", "/a/c", "/", "/x y"]
    assert d.workdir == "/x y"


def test_workdir_and_user_errors() -> None:
    fails("FROM base\nWORKDIR $NOPE\n", 2, "WORKDIR needs a path")
    fails("FROM base\nUSER a b\n", 2, "USER needs user[:group], got 'a b'")
    fails("FROM base\nUSER a:b:c\n", 2, "USER needs user[:group], got 'a:b:c'")


def test_user() -> None:
    assert parse("FROM base\nUSER 1000:1000\n").user == "1000:1000"
    assert parse("FROM base\nUSER root\nUSER app\n").user == "app"


def test_cmd_entrypoint_last_wins() -> None:
    d = parse(
        "FROM base\nCMD [\"a\"]\nCMD b c\nENTRYPOINT e\nENTRYPOINT [\"f\", \"g\"]\n")
    assert d.cmd == ("/bin/sh", "-c", "b c")
    assert d.entrypoint == ("f", "g")
    assert d.instructions[2] == Command(3, "CMD", ("/bin/sh", "-c", "b c"), True)
    assert d.instructions[4] == Command(5, "ENTRYPOINT", ("f", "g"), False)


def test_empty_json_clears_cmd() -> None:
    d = parse("FROM base\nCMD [\"a\"]\nCMD []\n")
    assert d.cmd is None


def test_cmd_errors() -> None:
    fails("FROM base\nCMD\n", 2, "CMD needs arguments")
    fails('FROM base\nENTRYPOINT ["a",]\n', 2,
          "ENTRYPOINT: malformed JSON form (expected a list of strings)")
    fails('FROM base\nCMD ["a", null]\n', 2,
          "CMD: malformed JSON form (expected a list of strings)")


# -- refused instructions, limits, continuations ---------------------------------------


@pytest.mark.parametrize("kind", [
    "EXPOSE 80", "VOLUME /data", "HEALTHCHECK CMD true", "ONBUILD RUN x", "STOPSIGNAL TERM",
    'SHELL ["/bin/bash", "-c"]', "LABEL a=b", "MAINTAINER me", "healthcheck NONE",
])
def test_unsupported_instructions(kind: str) -> None:
    name = kind.split()[0].upper()
    fails(f"FROM base\nRUN true\n\n\n\n\n{kind}\n", 7, f"{name} is not supported")


def test_unsupported_before_from_says_unsupported() -> None:
    fails("LABEL a=b\nFROM base\n", 1, "LABEL is not supported")


def test_unknown_instruction() -> None:
    fails("FROM base\nFOO bar\n", 2, "unknown instruction FOO")
    fails("FROM base\nrunn x\n", 2, "unknown instruction runn")


def test_continuation_line_numbers() -> None:
    text = (
        "FROM base\n"          # 1
        "RUN a \\\n"           # 2
        "    b \\\n"           # 3
        "# comment\n"          # 4
        "    c\n"              # 5
        "\n"                   # 6
        "ENV A=1 \\\t\n"       # 7 (whitespace after the backslash)
        "    B=2\n"            # 8
        "EXPOSE \\\n"          # 9
        "  80\n"               # 10
    )
    with pytest.raises(DockerfileError) as info:
        parse(text)
    assert str(info.value) == "line 9: EXPOSE is not supported"
    d = parse(text.rsplit("EXPOSE", 1)[0])
    assert [(i.line, i.kind) for i in d.instructions] == [(1, "FROM"), (2, "RUN"), (7, "ENV")]
    assert d.instructions[1] == Run(2, "RUN", ("/bin/sh", "-c", "a     b     c"), True, ())
    assert d.env == (("A", "1"), ("B", "2"))


def test_error_inside_continuation_names_first_line() -> None:
    fails("FROM base\nCOPY \\\n  a \\\n  /abs/b \\\n  /dst/\n", 2,
          "COPY source '/abs/b' must be relative to the build context")


def test_unterminated_continuation() -> None:
    fails("FROM base\nRUN a \\\n  b \\\n", 2, "unterminated line continuation at end of file")
    fails("FROM base\nRUN a \\", 2, "unterminated line continuation at end of file")
    fails("FROM base\nRUN a \\\n# trailing comment\n\n", 2,
          "unterminated line continuation at end of file")


def test_hash_not_at_line_start_is_not_a_comment() -> None:
    d = parse("FROM base\nRUN echo a # b\n  # indented comment\n")
    assert d.instructions[1] == Run(2, "RUN", ("/bin/sh", "-c", "echo a # b"), True, ())
    assert len(d.instructions) == 2


def test_size_limit() -> None:
    head = "FROM base\n# "
    parse(head + "x" * (1024 * 1024 - len(head)))
    fails(head + "x" * (1024 * 1024 - len(head) + 1), 0, "Dockerfile is larger than 1 MiB")
    # Counted in UTF-8 bytes, not characters.
    fails(head + "é" * (1024 * 1024 // 2), 0, "Dockerfile is larger than 1 MiB")


def test_instruction_limit() -> None:
    ok = "FROM base\n" + "RUN true\n" * 999
    assert len(parse(ok).instructions) == 1000
    fails(ok + "RUN true\n", 1001, "more than 1000 instructions")


# -- cache keys ---------------------------------------------------------------------

CACHED = """\
FROM base
ARG V=1
ENV A=1
WORKDIR /app
COPY a b ./
RUN make
CMD ["./app"]
"""
DIGESTS = {"a": "sha256:aa", "b": "sha256:bb"}


def test_cache_keys_shape_and_determinism() -> None:
    d = parse(CACHED)
    keys = cache_keys(d, DIGESTS)
    assert len(keys) == len(d.instructions) == 7
    assert len(set(keys)) == 7
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)
    assert cache_keys(parse(CACHED), dict(DIGESTS)) == keys


@pytest.mark.parametrize(("index", "old", "new"), [
    (1, "ARG V=1", "ARG V=2"),
    (2, "ENV A=1", "ENV A=2"),
    (3, "WORKDIR /app", "WORKDIR /srv"),
    (4, "COPY a b ./", "COPY --chown=u a b ./"),
    (5, "RUN make", "RUN make all"),
    (6, 'CMD ["./app"]', "CMD ./app"),
])
def test_changing_instruction_n_changes_keys_from_n(index: int, old: str, new: str) -> None:
    keys = cache_keys(parse(CACHED), DIGESTS)
    changed = cache_keys(parse(CACHED.replace(old, new)), DIGESTS)
    assert changed[:index] == keys[:index]
    assert all(a != b for a, b in zip(changed[index:], keys[index:], strict=True))


def test_build_arg_changes_keys_from_its_arg() -> None:
    keys = cache_keys(parse(CACHED), DIGESTS)
    changed = cache_keys(parse(CACHED, {"V": "9"}), DIGESTS)
    assert changed[0] == keys[0]
    assert all(a != b for a, b in zip(changed[1:], keys[1:], strict=True))


def test_source_digest_changes_keys_from_its_copy() -> None:
    keys = cache_keys(parse(CACHED), DIGESTS)
    changed = cache_keys(parse(CACHED), {**DIGESTS, "b": "sha256:changed"})
    assert changed[:4] == keys[:4]
    assert all(a != b for a, b in zip(changed[4:], keys[4:], strict=True))
    # Digests of paths no instruction copies do not matter.
    assert cache_keys(parse(CACHED), {**DIGESTS, "other": "x"}) == keys


def test_base_changes_every_key() -> None:
    keys = cache_keys(parse(CACHED), DIGESTS)
    other = cache_keys(parse(CACHED.replace("FROM base", "FROM debian:12")), DIGESTS)
    rebuilt = cache_keys(parse(CACHED), DIGESTS, base_digest="sha256:new-base")
    assert all(a != b for a, b in zip(keys, other, strict=True))
    assert all(a != b for a, b in zip(keys, rebuilt, strict=True))


def test_comments_and_line_numbers_do_not_change_keys() -> None:
    keys = cache_keys(parse(CACHED), DIGESTS)
    moved = "# header\n\n" + CACHED.replace("RUN make", "# note\nRUN \\\n  make")
    assert cache_keys(parse(moved), DIGESTS) == keys


def test_missing_source_digest() -> None:
    with pytest.raises(KeyError, match="line 5: no digest for COPY source 'b'"):
        cache_keys(parse(CACHED), {"a": "sha256:aa"})
