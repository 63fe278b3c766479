"""The wire path: query bytes in (built with dnspython), answer bytes out (parsed with dnspython)."""

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsnet.dns import wire
from nsnet.dns.handler import DROP, FORWARD, MAX_ROTATIONS, REPLY, handle, servfail
from nsnet.dns.records import Record, RecordSet

RS = RecordSet(
    [
        Record("me", "n1", ("me",), "10.1.0.1"),
        Record("w", "n1", ("web",), "10.1.0.2", "fd01::2"),
        Record("a", "n1", ("api", "svc"), "10.1.0.3"),
        Record("b", "n1", ("api2", "svc"), "10.1.0.4"),
        Record("c", "n1", ("api3", "svc"), "10.1.0.5"),
        Record("x", "n2", ("hidden",), "10.2.0.2"),
    ]
    + [Record(f"r{i}", "n1", (f"r{i}", "many"), f"10.1.1.{i}") for i in range(1, 61)],
    {"n1": "net1", "n2": "net2"},
)


def ask(name, rdtype="A", tcp=False, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    out = handle(RS, "me", q.to_wire(), tcp)
    return q, out


def parse(out, i=0):
    assert out.action == REPLY
    return dns.message.from_wire(out.replies[i])


def addresses(msg):
    return [rr.address for rrset in msg.answer for rr in rrset]


def test_local_a_answer():
    q, out = ask("web")
    r = parse(out)
    assert r.id == q.id and r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.AA and r.flags & dns.flags.RA
    assert r.flags & dns.flags.RD  # echoed from the query
    assert addresses(r) == ["10.1.0.2"]
    assert r.answer[0].ttl == wire.TTL
    assert out.cacheable


def test_question_echoed_with_its_case():
    q, out = ask("wEb.")  # what 0x20 randomisation sends
    r = parse(out)
    assert r.question[0].name.to_text() == "wEb."
    assert r.answer[0].name.to_text() == "wEb."
    assert addresses(r) == ["10.1.0.2"]


def test_aaaa_and_nodata_and_other_types():
    assert [rr.address for rr in parse(ask("web", "AAAA")[1]).answer[0]] == ["fd01::2"]
    for rdtype in ("AAAA", "MX", "TXT", "SRV"):
        r = parse(ask("api", rdtype)[1])
        assert r.rcode() == dns.rcode.NOERROR and not r.answer, rdtype


def test_nxdomain_for_unknown_single_label_and_hidden_names():
    for name in ("nosuch", "hidden"):
        r = parse(ask(name)[1])
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer


def test_forward_for_names_not_ours():
    q, out = ask("example.com")
    assert out.action == FORWARD and out.query.name == "example.com" and out.max_size == 512
    q, out = ask("example.com", use_edns=0, payload=4096)
    assert out.max_size == 4096
    assert ask("example.com", tcp=True)[1].max_size == 65535
    # CHAOS class is not ours either
    q = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert handle(RS, "me", q.to_wire()).action == FORWARD


def test_name_dot_network():
    assert addresses(parse(ask("web.net1")[1])) == ["10.1.0.2"]


def test_ptr_answer():
    r = parse(ask("2.0.1.10.in-addr.arpa", "PTR")[1])
    assert [rr.target.to_text() for rr in r.answer[0]] == ["web.net1."]


def test_round_robin_rotations():
    _, out = ask("svc")
    firsts = {addresses(parse(out, i))[0] for i in range(len(out.replies))}
    assert len(out.replies) == 3 and firsts == {"10.1.0.3", "10.1.0.4", "10.1.0.5"}
    for i in range(3):
        assert sorted(addresses(parse(out, i))) == ["10.1.0.3", "10.1.0.4", "10.1.0.5"]


def test_too_big_for_udp_sets_tc_and_tcp_carries_all():
    _, out = ask("many")  # 60 addresses: more than 512 bytes
    r = parse(out)
    assert r.flags & dns.flags.TC and not r.answer
    assert len(out.replies) == MAX_ROTATIONS
    _, out = ask("many", tcp=True)
    assert len(addresses(parse(out))) == 60
    _, out = ask("many", use_edns=0, payload=4096)
    assert len(addresses(parse(out))) == 60


def test_edns_answered_with_edns():
    q, out = ask("web", use_edns=0, payload=1400, want_dnssec=True)
    r = parse(out)
    assert r.edns == 0 and r.payload == wire.OUR_PAYLOAD
    assert r.ednsflags & dns.flags.DO
    assert addresses(r) == ["10.1.0.2"]
    q, out = ask("web")
    assert parse(out).edns == -1


def test_edns_options_are_not_cached_but_answered():
    cookie = dns.edns.GenericOption(10, b"\x01" * 8)
    q, out = ask("web", use_edns=0, options=[cookie])
    assert addresses(parse(out)) == ["10.1.0.2"] and not out.cacheable


def test_badvers():
    q = dns.message.make_query("web", "A", use_edns=1)
    r = dns.message.from_wire(handle(RS, "me", q.to_wire()).replies[0])
    assert r.rcode() == dns.rcode.BADVERS


def header(qid=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def rcode_of(data):
    return struct.unpack("!H", data[2:4])[0] & 0xF


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x12", header()[:11]],
)
def test_short_packets_are_dropped(packet):
    assert handle(RS, "me", packet).action == DROP


def test_responses_are_never_answered():
    q = dns.message.make_query("web", "A")
    resp = dns.message.make_response(q).to_wire()
    assert handle(RS, "me", resp).action == DROP


@pytest.mark.parametrize(
    "packet,rcode",
    [
        (header(qd=0), wire.FORMERR),
        (header(qd=2) + b"\x03web\x00\x00\x01\x00\x01" * 2, wire.FORMERR),
        (header() + b"\x03we", wire.FORMERR),  # label runs past the end
        (header() + b"\x03web\x00\x00", wire.FORMERR),  # no class
        (header() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer loop in the question
        (header() + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
         + b"\x00\x00\x01\x00\x01", wire.FORMERR),  # 257 bytes of name
        (header(ar=1) + b"\x03web\x00\x00\x01\x00\x01\x00\x00\x29", wire.FORMERR),  # cut OPT
        (header(ar=2) + b"\x03web\x00\x00\x01\x00\x01" + (b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00") * 2,
         wire.FORMERR),  # two OPTs
        (header(flags=0x2000) + b"\x03web\x00\x00\x01\x00\x01", wire.NOTIMP),  # UPDATE
    ],
)
def test_malformed_queries_get_errors(packet, rcode):
    out = handle(RS, "me", packet)
    assert out.action == REPLY
    r = out.replies[0]
    assert r[:2] == packet[:2] and r[2] & 0x80 and rcode_of(r) == rcode
    dns.message.from_wire(r)  # well-formed itself


def test_longest_legal_name_is_fine():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters, 255 on the wire
    q = dns.message.make_query(name, "A")
    assert handle(RS, "me", q.to_wire()).action == FORWARD


def test_servfail_builder():
    q = dns.message.make_query("Example.COM", "A", use_edns=0)
    r = dns.message.from_wire(servfail(q.to_wire()))
    assert r.id == q.id and r.rcode() == dns.rcode.SERVFAIL and r.question[0].name.to_text() == "Example.COM."
    assert not r.flags & dns.flags.AA
    assert servfail(b"\x00") is None


def test_truncated_forward_answer_builder():
    q = dns.message.make_query("example.com", "TXT")
    data = q.to_wire()
    parsed = wire.parse_query(data)
    t = dns.message.from_wire(wire.truncated(parsed, data, 0x8180))
    assert t.flags & dns.flags.TC and t.id == q.id and not t.answer


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_never_raises(packet):
    out = handle(RS, "me", packet)
    for r in out.replies:
        assert len(r) >= 12


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_queries(data):
    base = bytearray(dns.message.make_query("api.net1", "A", use_edns=0).to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    out = handle(RS, "me", bytes(base[: data.draw(st.integers(0, len(base)))]))
    for r in out.replies:
        if r[2] & 0x80:
            dns.message.from_wire(r, ignore_trailing=True)


def test_random_garbage_fast_enough():
    rnd = random.Random(4)
    for _ in range(2000):
        handle(RS, "me", header() + bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(64))))


# --- names DNS cannot carry (a label over 63 bytes, a name over 253) --------------------------

LONG = "x" * 64  # one byte over a label's limit


def test_encode_name_refuses_what_dns_cannot_carry():
    assert wire.encode_name("a" * 63 + ".net") == b"\x3f" + b"a" * 63 + b"\x03net\x00"
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters, 255 bytes on the wire
    assert len(wire.encode_name(longest)) == 255 and wire.name_fits(longest)
    for bad in (LONG, LONG + ".net", longest + "a", "a..b", "café.net", ""):
        assert not wire.name_fits(bad)
        with pytest.raises(ValueError):
            wire.encode_name(bad)


def test_ptr_for_an_address_whose_name_is_too_long_answers_with_the_names_that_fit():
    rs = RecordSet([Record("me", "n1", ("me",), "10.1.0.1"),
                    Record("long", "n1", (LONG, "alias", "0123456789ab"), "10.1.0.7", "fd01::7"),
                    Record("none", "n1", (LONG,), "10.1.0.8")], {"n1": "net1"})
    for arpa in ("7.0.1.10.in-addr.arpa", dns.reversename.from_address("fd01::7").to_text()):
        out = handle(rs, "me", dns.message.make_query(arpa, "PTR").to_wire())
        assert [rr.target.to_text() for rr in parse(out).answer[0]] == ["alias.net1."]
    # no name of it fits: no PTR record of ours (the address is as good as unknown)
    assert handle(rs, "me", dns.message.make_query("8.0.1.10.in-addr.arpa", "PTR").to_wire()).action == FORWARD
    # the long name itself cannot even be asked for: the query is refused as malformed
    raw = header() + b"\x40" + b"x" * 64 + b"\x00\x00\x01\x00\x01"
    assert rcode_of(handle(rs, "me", raw).replies[0]) == dns.rcode.FORMERR
