"""envd: the daemon inside every sbx sandbox, wire-compatible with E2B's envd.

It runs as PID 1 of the sandbox and serves, on TCP port 49983:

- Connect RPC (JSON codec): ``process.Process`` and ``filesystem.Filesystem``;
- plain HTTP: ``GET /health``, ``GET /ready``, ``GET|POST /files``,
  ``POST /init``, ``GET /envs``, ``GET /metrics``.

A custom template's run-time config (``/opt/sbx/template.json``: default
environment, working directory and user, a supervised start command and its
readiness) is read at start: see ``template`` and ``startcmd``.

Standard library only and self-contained: this directory is copied into the
sandbox root filesystem as the top-level package ``envd`` and started with
``SBX_ENVD_ACCESS_TOKEN=<token> python3 -m envd [--port 49983]`` (from the
directory holding ``envd/``), or built into a zipapp with
``python3 -m zipapp <dir holding envd/> -m envd.main:main -o envd.pyz``.
Only relative imports are used inside the package.
"""

# The E2B envd protocol level implemented; the control plane should report it
# as the sandbox's ``envdVersion`` so that SDKs enable every feature.
ENVD_VERSION = "0.6.4"
