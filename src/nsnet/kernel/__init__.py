"""The only layer that talks to the kernel: netlink, namespaces, nftables, sysctls, processes."""
