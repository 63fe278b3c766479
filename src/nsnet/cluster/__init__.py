"""Hosts that share networks (a swarm): the settings a member keeps (`settings`) and its membership in the
etcd they share (`membership`). Without a swarm nothing here runs and no etcd is needed."""
from .membership import Cluster, request

__all__ = ["Cluster", "request"]
