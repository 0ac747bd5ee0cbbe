"""Pure content detectors for the egress proxy: PII going out, prompt injection coming in."""
