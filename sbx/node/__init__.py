"""The node agent and everything privileged it drives on its host: the
runtime (runsc), network namespaces, nftables, disks and root filesystems."""
