"""What the control plane and the node both speak of, and nothing else:
the network policy (policy.py), the seed-002 security policy
(security.py) and identifiers (ids.py). A leaf: it imports nothing of sbx,
so the node side can use it without reaching into core."""
