"""The code interpreter service of the `code-interpreter-v1` template.

It runs inside the sandbox (port 49999, as the sandbox user), started by
envd as the template's start command, and speaks the wire of E2B's Code
Interpreter SDKs (``e2b-code-interpreter``, ``@e2b/code-interpreter``):
``POST /execute`` streams a cell's output as NDJSON; ``/contexts`` creates,
lists, restarts and removes contexts, each one Jupyter kernel driven
directly with ``jupyter_client``. See docs/code-interpreter.md.

Like envd it imports nothing else of sbx: it is copied into the template's
root filesystem. Unlike envd it has third-party dependencies
(``jupyter_client``, ``uvicorn``), installed in that image.
"""
