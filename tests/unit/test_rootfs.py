"""Tuning of a template's login files: fewer processes, same results."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sbx.node import rootfs

DEBIAN_PROFILE = '''if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin"
fi
export PATH
'''
ROOT_PROFILE = '''if [ "$BASH" ]; then
  :
fi

mesg n 2> /dev/null || true
'''


def test_tune_profile_is_idempotent_and_keeps_results(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "root").mkdir()
    profile = tmp_path / "etc/profile"
    profile.write_text(DEBIAN_PROFILE)
    profile.chmod(0o644)
    (tmp_path / "root/.profile").write_text(ROOT_PROFILE)
    rootfs.tune_profile(tmp_path)
    once = profile.read_text()
    assert "$(id -u)" in once and "${EUID:-$(id -u)}" in once
    assert "[ -t 0 ] && mesg n" in (tmp_path / "root/.profile").read_text()
    rootfs.tune_profile(tmp_path)
    assert profile.read_text() == once
    assert profile.stat().st_mode & 0o777 == 0o644
    # Same PATH from bash (EUID) and from sh (falls back to id -u).
    for shell in ("bash", "sh"):
        out = subprocess.run([shell, "-c", f". {profile}; echo $PATH"], capture_output=True,
                             text=True, check=True).stdout
        expected = subprocess.run([shell, "-c", f"{DEBIAN_PROFILE}\necho $PATH"],
                                  capture_output=True, text=True, check=True).stdout
        assert out == expected
    # A rootfs without the files is left alone.
    rootfs.tune_profile(tmp_path / "missing")
