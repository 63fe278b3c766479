"""Which bridge of a bridge network a new port goes on, and what a restarted daemon reads back."""
from nsnet.drivers import fabric
from nsnet.drivers.fabric import PORTS_PER_BRIDGE, Bridge, Fabric
from nsnet.model import owner_alias

NET = "0123456789abcdef"


def link(index, kind="veth", alias=None, master=None):
    return {"index": index, "kind": kind, "alias": alias, "master": master}


def test_the_networks_own_bridge_fills_first_then_each_leaf_in_turn():
    fab = Fabric(Bridge("nsbr-0123456789", 10))
    for i in range(PORTS_PER_BRIDGE):
        assert fab.with_room() is fab.root
        fab.took(f"p{i}", fab.root)
    assert fab.with_room() is None and fab.next_leaf_number() == 1
    leaf = Bridge(fabric.leaf_name(NET, 1), 20, ports=1)    # its uplink
    fab.leaves[1] = leaf
    assert fab.with_room() is leaf
    fab.released("p0")                                      # room again on the network's own bridge
    assert fab.with_room() is fab.root
    fab.released("p0")                                      # a port released twice counts once
    assert fab.root.ports == PORTS_PER_BRIDGE - 1


def test_names_fit_the_kernels_15_characters():
    for k in (1, 999):
        assert len(fabric.leaf_name(NET, k)) <= 15
        assert all(len(n) <= 15 for n in fabric.uplink_names(NET, k))


def test_load_reads_leaves_and_ports_and_ignores_what_is_not_this_networks():
    alias = owner_alias(NET)
    linkmap = {
        "nsbr-0123456789": link(10, "bridge", alias),
        "nsl01234567-1": link(20, "bridge", alias),
        "nsl01234567-3": link(30, "bridge", alias),
        "nsl01234567-2": link(40, "bridge", "nsnet network 01234567ffff"),   # another network, same prefix
        "nsl01234567-x": link(50, "bridge", alias),
        "nsu01234567-1": link(21, alias=alias, master=10),
        "nsd01234567-1": link(22, alias=alias, master=20),
        "nsv1": link(60, master=10),
        "nsv2": link(61, master=20),
        "nsv3": link(62, master=30),
        "other": link(70, master=40),
    }
    fab = fabric.load(linkmap, NET, "nsbr-0123456789")
    bridges = [fab.root, *fab.leaves.values()]
    assert [b.name for b in bridges] == ["nsbr-0123456789", "nsl01234567-1", "nsl01234567-3"]
    assert [b.ports for b in bridges] == [2, 2, 1]
    assert fab.port_of["nsv3"].name == "nsl01234567-3" and "other" not in fab.port_of
    assert fab.next_leaf_number() == 4
