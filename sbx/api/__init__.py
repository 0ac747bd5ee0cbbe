"""The HTTP API: one FastAPI app with a route module per surface
(seed 000 at /v1/sandbox, seed 002 and the E2B protocol at /sandboxes)."""
