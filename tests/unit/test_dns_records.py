"""Who sees which name: RecordSet's lookup rules (pure, no root)."""

from nsnet.dns.records import A, AAAA, ANSWER, FORWARD, NXDOMAIN, PTR, Lookup, Record, RecordSet

MX, NS, SOA, TXT = 15, 2, 6, 16

# net1: web, api (+alias "svc"), both; net2: db, worker (+alias "svc"), both.
# "both" sits on the two networks with one address on each.
RECORDS = [
    Record("sb-web", "n1", ("web", "web-host"), "10.1.0.2", "fd01::2"),
    Record("sb-api", "n1", ("api", "svc"), "10.1.0.3"),
    Record("sb-db", "n2", ("db",), "10.2.0.2", "fd02::2"),
    Record("sb-wrk", "n2", ("worker", "svc"), "10.2.0.3"),
    Record("sb-both", "n1", ("both", "both"), "10.1.0.9"),
    Record("sb-both", "n2", ("both",), "10.2.0.9"),
    Record("sb-web2", "n1", ("web2", "svc"), "10.1.0.4"),
]
RS = RecordSet(RECORDS, {"n1": "front", "n2": "Back"})


def test_name_resolves_within_a_shared_network():
    assert RS.lookup("sb-api", "web", A) == Lookup(ANSWER, ("10.1.0.2",))
    assert RS.lookup("sb-api", "web-host.", A) == Lookup(ANSWER, ("10.1.0.2",))  # hostname, FQDN form


def test_other_networks_are_invisible():
    # single label: ours to deny at once; dotted: maybe the world's, so forwarded
    assert RS.lookup("sb-web", "db", A).outcome == NXDOMAIN
    assert RS.lookup("sb-db", "web", A).outcome == NXDOMAIN
    assert RS.lookup("sb-db", "web.front", A).outcome == FORWARD


def test_address_on_the_shared_network():
    assert RS.lookup("sb-web", "both", A).values == ("10.1.0.9",)
    assert RS.lookup("sb-db", "both", A).values == ("10.2.0.9",)
    # the two-network sandbox sees both of web's peers, each on its own network
    assert RS.lookup("sb-both", "web", A).values == ("10.1.0.2",)
    assert RS.lookup("sb-both", "db", A).values == ("10.2.0.2",)


def test_alias_shared_by_several_sandboxes_gives_all_addresses():
    assert set(RS.lookup("sb-web", "svc", A).values) == {"10.1.0.3", "10.1.0.4"}
    assert RS.lookup("sb-db", "svc", A).values == ("10.2.0.3",)
    assert set(RS.lookup("sb-both", "svc", A).values) == {"10.1.0.3", "10.1.0.4", "10.2.0.3"}


def test_case_insensitive():
    assert RS.lookup("sb-api", "WeB.", A).values == ("10.1.0.2",)
    rs = RecordSet([Record("x", "n1", ("MixedCase",), "10.1.0.7"), Record("y", "n1", ("y",), "10.1.0.8")])
    assert rs.lookup("y", "mixedcase", A).values == ("10.1.0.7",)


def test_aaaa_and_nodata():
    assert RS.lookup("sb-api", "web", AAAA) == Lookup(ANSWER, ("fd01::2",))
    assert RS.lookup("sb-web", "api", AAAA) == Lookup(ANSWER, ())  # exists, no IPv6: NODATA
    assert RS.lookup("sb-web", "api", MX) == Lookup(ANSWER, ())
    assert RS.lookup("sb-web", "api", TXT) == Lookup(ANSWER, ())


def test_network_name_suffix_as_docker():
    assert RS.lookup("sb-api", "web.front", A).values == ("10.1.0.2",)
    assert RS.lookup("sb-api", "WEB.FRONT.", A).values == ("10.1.0.2",)
    assert RS.lookup("sb-both", "db.back", A).values == ("10.2.0.2",)
    # restricted to that network: "both" on net2 only
    assert RS.lookup("sb-both", "both.back", A).values == ("10.2.0.9",)
    # the asker is not on net2
    assert RS.lookup("sb-web", "db.back", A).outcome == FORWARD
    # a name that is not on that network
    assert RS.lookup("sb-web", "db.front", A).outcome == FORWARD


def test_ptr():
    assert RS.lookup("sb-api", "2.0.1.10.in-addr.arpa.", PTR) == Lookup(ANSWER, ("web.front",))
    v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.d.f.ip6.arpa"
    assert RS.lookup("sb-api", v6, PTR) == Lookup(ANSWER, ("web.front",))
    assert RS.lookup("sb-wrk", "2.0.2.10.IN-ADDR.ARPA", PTR) == Lookup(ANSWER, ("db.back",))


def test_ptr_follows_visibility():
    assert RS.lookup("sb-db", "2.0.1.10.in-addr.arpa", PTR).outcome == FORWARD
    assert RS.lookup("sb-api", "99.0.1.10.in-addr.arpa", PTR).outcome == FORWARD
    assert RS.lookup("sb-api", "1.10.in-addr.arpa", PTR).outcome == FORWARD  # a zone, not an address
    assert RS.lookup("sb-api", "x.0.1.10.in-addr.arpa", PTR).outcome == FORWARD


def test_ptr_without_network_names_is_the_sandbox_name():
    rs = RecordSet([Record("a", "n", ("alpha", "al"), "10.9.0.2"), Record("b", "n", ("b",), "10.9.0.3")])
    assert rs.lookup("b", "2.0.9.10.in-addr.arpa", PTR).values == ("alpha",)


def test_single_label_not_ours_is_nxdomain_but_zone_questions_go_out():
    assert RS.lookup("sb-web", "nosuch", A).outcome == NXDOMAIN
    assert RS.lookup("sb-web", "nosuch", AAAA).outcome == NXDOMAIN
    assert RS.lookup("sb-web", "com", NS).outcome == FORWARD
    assert RS.lookup("sb-web", "com", SOA).outcome == FORWARD
    assert RS.lookup("sb-web", "", NS).outcome == FORWARD  # the root
    assert RS.lookup("sb-web", "example.com", A).outcome == FORWARD


def test_unknown_asker_sees_nothing():
    assert RS.lookup("stranger", "web", A).outcome == NXDOMAIN
    assert RS.lookup("stranger", "2.0.1.10.in-addr.arpa", PTR).outcome == FORWARD


def test_snapshot_is_independent_of_the_input_list():
    recs = list(RECORDS)
    rs = RecordSet(recs)
    recs.clear()
    assert rs.lookup("sb-api", "web", A).values == ("10.1.0.2",)
    assert rs.networks_of("sb-both") == ("n1", "n2")
    assert len(rs.records) == len(RECORDS)


# --- names DNS cannot carry -------------------------------------------------------------------

LONG = "x" * 64


def test_names_dns_cannot_carry_are_not_served_and_noted_once_per_record():
    rs = RecordSet([Record("me", "n1", ("me",), "10.1.0.1"),
                    Record("long", "n1", (LONG, "alias", "id12"), "10.1.0.7"),
                    Record("ok", "n1", ("ok",), "10.1.0.8")], {"n1": "front"})
    assert rs.lookup("me", LONG, A).outcome == NXDOMAIN  # no record under that name
    assert rs.lookup("me", "alias", A).values == ("10.1.0.7",)
    assert rs.lookup("me", "7.0.1.10.in-addr.arpa", PTR).values == ("alias.front",)
    assert rs.unservable == {("long", "n1"): f"names DNS cannot carry, not served: {LONG}; reverse name alias.front"}
    rs.update(remove=[("long", "n1")])
    assert rs.unservable == {}
    # with the network's name, Docker's PTR name is too long though every name alone fits
    name = "y" * 63
    net = ".".join(["z" * 63] * 3)
    rs = RecordSet([Record("me", "n1", ("me",), "10.1.0.1")], {"n1": net})
    rs.update(add=[Record("big", "n1", (name, "short"), "10.1.0.9")])
    assert rs.lookup("me", "9.0.1.10.in-addr.arpa", PTR).values == (f"short.{net}",)
    assert rs.lookup("me", name, A).values == ("10.1.0.9",)
    assert rs.unservable == {("big", "n1"): f"reverse name short.{net}"}
    rs.update(add=[Record("big", "n1", (name,), "10.1.0.9")])
    assert rs.lookup("me", "9.0.1.10.in-addr.arpa", PTR).outcome == FORWARD
    assert rs.unservable == {("big", "n1"): "no reverse name"}
