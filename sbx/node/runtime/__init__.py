"""Runtime drivers: what actually runs a sandbox. The interface is in
base.py; GVisorRuntime is the tested default."""
