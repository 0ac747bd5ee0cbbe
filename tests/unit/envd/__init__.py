"""Tests for envd, the in-sandbox daemon (run as a real subprocess)."""
