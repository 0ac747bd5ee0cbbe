"""Pseudo-terminal helpers for PTY processes."""

from __future__ import annotations

import fcntl
import os
import struct
import termios


def open_pty(rows: int, cols: int) -> tuple[int, int]:
    """A (master, slave) pair with the window size set; the master non-blocking."""
    master, slave = os.openpty()
    set_size(master, rows, cols)
    os.set_blocking(master, False)
    os.set_inheritable(master, False)
    return master, slave


def set_size(fd: int, rows: int, cols: int) -> None:
    # The kernel sends SIGWINCH to the terminal's foreground process group.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 24, cols or 80, 0, 0))


def take_controlling_terminal() -> None:
    """Run in the child between fork and exec, after setsid and the dup2 onto 0/1/2.

    A session leader only acquires a controlling terminal by opening one or by
    TIOCSCTTY; the inherited descriptor does not count.
    """
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
