"""The node interface (contract.py): what the control plane asks of a node.
A leaf beside sbx/shared: core depends on it, the node implements it."""
