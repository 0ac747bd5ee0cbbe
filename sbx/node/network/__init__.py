"""Per-sandbox networking: address pool, network namespaces and veth pairs,
and the host's nftables rules that confine sandbox traffic."""
