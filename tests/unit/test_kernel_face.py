"""The kernel face itself: every verb speaks nsnet's errors only, a link nsnet makes is marked as its own or
not left at all, and the in-memory fake (fakekernel.py) has the same verbs as the real one."""
import inspect

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from fakekernel import FakeKernel, FakeOverlayNs, FakeSandboxNs

from nsnet.errors import KernelError
from nsnet.kernel import lan, rtnl
from nsnet.kernel.host import Kernel, SandboxNs, verb
from nsnet.kernel.overlayns import OverlayNs

# What the fake has that the face has not: its state, its fault hook, its make-believe LAN.
FAKE_ONLY = {"state", "fail_at", "faults", "ns", "sysctls", "sandboxes", "overlays", "lan", "missing"}
# What the real objects have that is not a verb: their lifetime, and the engine's own calls.
NOT_VERBS = {"close", "sandbox", "forget", "is_own_netns", "forget_flows", "ipr", "rtnl", "make", "adopt",
             "discard", "remove"}


def test_library_refusals_come_out_as_kernel_errors():
    @verb
    def refused():
        raise NetlinkError(17, "File exists")

    @verb
    def gone():
        open("/proc/sys/net/ipv4/conf/no-such-link0/arp_ignore")

    with pytest.raises(KernelError) as e:
        refused()
    assert e.value.code == 17 and str(e.value) == "File exists"
    with pytest.raises(KernelError) as e:
        gone()
    assert e.value.code == 2


@pytest.mark.parametrize("real, fake", [(Kernel, FakeKernel), (SandboxNs, FakeSandboxNs),
                                        (OverlayNs, FakeOverlayNs)])
def test_the_fake_has_the_faces_verbs_and_every_verb_translates(real, fake):
    def public(cls, skip):
        return {n for n in vars(cls) if not n.startswith("_") and n not in skip}

    assert public(fake, FAKE_ONLY | NOT_VERBS) == public(real, NOT_VERBS | {"pid", "fd", "path"})
    for name in public(real, NOT_VERBS):
        method = getattr(real, name)
        assert getattr(method, "__wrapped__", None), f"{real.__name__}.{name} is not a @verb"
        want = list(inspect.signature(method.__wrapped__).parameters)
        assert list(inspect.signature(getattr(fake, name)).parameters) == want, name


class Ipr:
    """pyroute2 as far as ensure_vlan uses it, refusing to set an alias."""

    def __init__(self):
        self.names = {"lan0": 2}

    def link_lookup(self, ifname):
        return [self.names[ifname]] if ifname in self.names else []

    def link(self, op, **kw):
        if op == "add":
            self.names[kw["ifname"]] = 9
        elif "ifalias" in kw:
            raise NetlinkError(1, "Operation not permitted")


class Chan:
    def __init__(self, ipr):
        self.ipr, self.sent = ipr, []

    def run(self, *requests):
        self.sent += requests
        for r in requests:
            if r.type == rtnl.RTM_DELLINK:
                self.ipr.names.pop("lan0.10")
        return [rtnl.Reply() for _ in requests]


def test_a_link_that_cannot_be_marked_as_nsnets_is_not_left_behind():
    """An unmarked 802.1Q link would be no one's: delete_network spares links without nsnet's alias."""
    ipr = Ipr()
    chan = Chan(ipr)
    with pytest.raises(NetlinkError):
        lan.ensure_vlan(ipr, chan, "lan0.10", "lan0", 10, alias="nsnet network x")
    assert "lan0.10" not in ipr.names and [r.type for r in chan.sent] == [rtnl.RTM_DELLINK]
