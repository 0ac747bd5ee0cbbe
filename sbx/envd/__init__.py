"""envd: the daemon inside every sbx sandbox (PID 1), wire-compatible with E2B's envd.

Standard library only and self-contained: this directory is copied into the
sandbox root filesystem as the top-level package ``envd`` and run with
``python3 -m envd``. Only relative imports are used inside it.
"""

# The envd protocol level this implementation matches (what the control plane
# should report as ``envdVersion``).
ENVD_VERSION = "0.6.4"
