"""CNI results per version, and nsnet's result appended to an earlier plugin's prevResult."""
from nsnet.engine import cniresult

MINE = cniresult.attachment(bridge="nsbr-1", host_ifname="nsv1", ifname="eth0", mac="02:42:ac:12:00:02",
                            netns="/run/netns/c1", addresses=[("172.18.0.2/16", "172.18.0.1")], mtu=None, dns=[])


def test_an_attachment_lists_host_interfaces_then_the_one_inside_with_its_ips_and_default_route():
    assert MINE == {
        "interfaces": [{"name": "nsbr-1"}, {"name": "nsv1"},
                       {"name": "eth0", "sandbox": "/run/netns/c1", "mac": "02:42:ac:12:00:02"}],
        "ips": [{"address": "172.18.0.2/16", "interface": 2, "gateway": "172.18.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "172.18.0.1"}]}


def test_version_0_4_ips_carry_their_family_and_1_x_ones_do_not():
    assert cniresult.shaped("0.4.0", MINE)["ips"][0]["version"] == "4"
    assert cniresult.shaped("0.4.0", MINE)["cniVersion"] == "0.4.0"
    one = cniresult.shaped("1.0.0", dict(MINE, ips=[dict(MINE["ips"][0], version="4")]))
    assert "version" not in one["ips"][0] and one["cniVersion"] == "1.0.0"


def test_after_an_earlier_plugin_its_interfaces_ips_and_dns_stay_first():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": "/run/netns/c1"}],
            "ips": [{"address": "10.9.0.2/24", "interface": 0}], "routes": [{"dst": "10.9.0.0/16"}],
            "dns": {"nameservers": ["10.9.0.1"]}}
    out = cniresult.chained(prev, dict(MINE, dns={"nameservers": ["172.18.0.1"]}))
    assert [i["name"] for i in out["interfaces"]] == ["lo", "nsbr-1", "nsv1", "eth0"]
    assert [(ip["address"], ip["interface"]) for ip in out["ips"]] == [("10.9.0.2/24", 0), ("172.18.0.2/16", 3)]
    assert out["routes"] == [{"dst": "10.9.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "172.18.0.1"}]
    assert out["dns"] == {"nameservers": ["10.9.0.1"]}
    assert cniresult.chained(None, MINE) is MINE
