import ipaddress
import json

import pytest
import yaml

from nsnet.errors import NsnetError
from nsnet.ipam.compose import apply_fix, predict, suggest_fix
from nsnet.facts import Evidence
from nsnet.ipam.pools import DEFAULT_POOLS

net = ipaddress.ip_network

COMPOSE = """
name: Shop.App
services:
  web:
    image: nginx
    networks: [front, back]
  api:
    image: api
    networks:
      back:
      data:
        aliases: [db-client]
  worker:
    image: worker            # no networks: joins `default`
  cache:
    image: redis
    network_mode: host       # joins nothing of the project
  tool:
    image: busybox
    profiles: [debug]
    networks: [debugnet]
networks:
  front: {}
  back:
    ipam:
      config:
        - subnet: 10.30.0.0/24
  data:
    driver: bridge
    name: shop-data
  unused: {}                 # no service uses it: not created
  ext:
    external: true
  debugnet: {}
"""

# The host: the first four Docker pools taken, a developer SSH'd in from 172.22.10.119.
EXISTING = [("bridge", "172.17.0.0/16"), ("a_default", "172.18.0.0/16"),
            ("b_default", "172.19.0.0/16"), ("c_default", "172.20.0.0/16")]
SSH = Evidence("peer", net("172.22.10.119/32"), "the peer of a live SSH connection to 172.42.10.112:22")


def summary(preds):
    return [(p.network_name, p.docker_name, str(p.subnet), p.source, [e.kind for e in p.collisions]) for p in preds]


def test_prediction_follows_dockers_order_and_flags_the_peer():
    preds = predict(COMPOSE, None, EXISTING, DEFAULT_POOLS, [SSH])
    assert summary(preds) == [
        ("back", "shopapp_back", "10.30.0.0/24", "explicit", []),
        ("data", "shop-data", "172.21.0.0/16", "pool", []),
        ("default", "shopapp_default", "172.22.0.0/16", "pool", ["peer"]),
        ("front", "shopapp_front", "172.23.0.0/16", "pool", []),
    ]


def test_empty_host_gets_the_first_pools():
    preds = predict(COMPOSE, "shop", [], DEFAULT_POOLS, [])
    assert [str(p.subnet) for p in preds] == ["10.30.0.0/24", "172.17.0.0/16", "172.18.0.0/16", "172.19.0.0/16"]
    assert preds[1].docker_name == "shop-data" and preds[2].docker_name == "shop_default"


def test_profiles_enable_services_and_their_networks():
    preds = predict(COMPOSE, "shop", [], DEFAULT_POOLS, [], profiles=["debug"])
    assert [p.network_name for p in preds] == ["back", "data", "debugnet", "default", "front"]


def test_docker_avoids_on_link_routes_and_resolvers_but_not_gateway_routes():
    onlink = Evidence("route", net("172.17.0.0/16"), "an on-link route to 172.17.0.0/16 dev br-x", onlink=True)
    resolver = Evidence("resolver", net("172.18.0.53/32"), "a nameserver in /etc/resolv.conf")
    via = Evidence("route", net("172.19.0.0/16"), "a route to 172.19.0.0/16 via 10.0.0.1 dev eth0")
    preds = predict(COMPOSE, "shop", [], DEFAULT_POOLS, [onlink, resolver, via])
    assert summary(preds)[1:3] == [("data", "shop-data", "172.19.0.0/16", "pool", ["route"]),
                                   ("default", "shop_default", "172.20.0.0/16", "pool", [])]


def test_fix_pins_every_pool_network_and_applied_has_no_collision():
    preds = predict(COMPOSE, None, EXISTING, DEFAULT_POOLS, [SSH])
    fix = suggest_fix(preds, DEFAULT_POOLS, [SSH], EXISTING)
    # Compose creates networks in Go map order, so any pool network could land on 172.22: pin all,
    # keeping what the harmless ones would get and moving the colliding one past everything.
    assert {k: str(v) for k, v in fix.subnets.items()} == {
        "data": "172.21.0.0/16", "default": "172.24.0.0/16", "front": "172.23.0.0/16"}
    block = yaml.safe_load(fix.compose_yaml)
    assert block["networks"]["default"] == {"ipam": {"config": [{"subnet": "172.24.0.0/16"}]}}
    fixed = apply_fix(COMPOSE, fix)
    after = predict(fixed, None, EXISTING, DEFAULT_POOLS, [SSH])
    assert all(p.source == "explicit" and not p.collisions for p in after)
    assert yaml.safe_load(fixed)["networks"]["data"]["name"] == "shop-data"  # rest of the file kept

    # The daemon.json pool, applied instead, also gives no collision.
    assert json.loads(fix.daemon_json) == {"default-address-pools": [{"base": "172.16.0.0/16", "size": 24}]}
    after = predict(COMPOSE, None, EXISTING, [fix.pool], [SSH])
    assert [str(p.subnet) for p in after if p.source == "pool"] == ["172.16.0.0/24", "172.16.1.0/24", "172.16.2.0/24"]
    assert not any(p.collisions for p in after)


def test_fix_avoids_every_evidence():
    office = Evidence("reserved", net("172.16.0.0/12"), "a range reserved in nsnet's configuration")
    preds = predict(COMPOSE, "shop", [], DEFAULT_POOLS, [office])
    assert all(p.collisions for p in preds if p.source == "pool")
    fix = suggest_fix(preds, DEFAULT_POOLS, [office])
    assert all(not office.network.overlaps(s) for s in fix.subnets.values())
    assert not fix.pool.base.overlaps(office.network)
    after = predict(apply_fix(COMPOSE, fix), "shop", [], DEFAULT_POOLS, [office])
    assert not any(p.collisions for p in after)


def test_no_collision_no_fix():
    preds = predict(COMPOSE, "shop", [], DEFAULT_POOLS, [])
    fix = suggest_fix(preds, DEFAULT_POOLS, [])
    assert fix.subnets == {} and fix.compose_yaml == ""


def test_existing_network_of_the_project_is_reused():
    existing = [("shop_default", "172.22.0.0/16")]
    evidence = [SSH, Evidence("docker", net("172.22.0.0/16"), "the subnet of Docker network 'shop_default'")]
    preds = predict(COMPOSE, "shop", existing, DEFAULT_POOLS, evidence)
    default = next(p for p in preds if p.network_name == "default")
    assert default.source == "existing" and [e.kind for e in default.collisions] == ["peer"]
    assert str(next(p for p in preds if p.network_name == "data").subnet) == "172.17.0.0/16"


def test_explicit_subnet_over_an_existing_network_is_flagged():
    text = "services: {a: {image: x}}\nnetworks:\n  default:\n    ipam:\n      config: [{subnet: 172.17.0.0/16}]\n"
    preds = predict(text, "p", [("bridge", "172.17.0.0/16")], DEFAULT_POOLS, [])
    assert preds[0].source == "explicit" and preds[0].collisions[0].kind == "docker"


def test_ipv6_only_ipam_still_gets_an_ipv4_pool():
    text = ("services: {a: {image: x}}\nnetworks:\n  default:\n    enable_ipv6: true\n"
            "    ipam:\n      config: [{subnet: 'fd00:1::/64'}]\n")
    preds = predict(text, "p", [], DEFAULT_POOLS, [])
    assert [(str(p.subnet), p.source) for p in preds] == [("fd00:1::/64", "explicit"), ("172.17.0.0/16", "pool")]


@pytest.mark.parametrize("text, fragment", [
    ("services: {a: {image: x, networks: [nope]}}", "service a refers to undefined network nope"),
    ("services: [a, b]", "services in the Compose file must be a mapping"),
    ("services: {a: {image: x}}\nnetworks: {default: {ipam: {config: [{subnet: 10.0.0.1/8}]}}}",
     "it should be 10.0.0.0/8"),
    ("services: {a: {image: x}}\nnetworks: {default: {ipam: {config: [{subnet: '${NET}'}]}}}", "uses variables"),
    ("services: {a: {image: x}\n", "cannot parse the Compose file"),
    ("- just a list", "not a mapping"),
])
def test_bad_compose_files(text, fragment):
    with pytest.raises(NsnetError) as e:
        predict(text, "p", [], DEFAULT_POOLS, [])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_project_name_required():
    with pytest.raises(NsnetError, match="no name"):
        predict("services: {a: {image: x}}", None, [], DEFAULT_POOLS, [])
