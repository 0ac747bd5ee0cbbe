"""Egress enforcement: what a sandbox's network policy lets out, decided
outside the sandbox (host nftables, a DNS resolver and a transparent
proxy per node), with credential brokering and an audit log.

The node agent uses one object, `EgressService` (service.py); the API uses
`control.py` (policy changes at runtime, the audit read)."""
