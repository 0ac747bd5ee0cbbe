"""The gateway: clients reach a sandbox's ports through the server's own
port, routed by the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or by a
host name `{port}-{sandbox_id}.{domain}`."""
