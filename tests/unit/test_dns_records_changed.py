"""RecordSet.update (in place) answers exactly as a set rebuilt from all records."""
from hypothesis import given, settings
from hypothesis import strategies as st

from nsnet.dns.records import A, PTR, Record, RecordSet

NETS = {"n1": "red", "n2": "blue"}


def rec(i: int, net: str, alias: str | None) -> Record:
    names = (f"s{i}",) + ((alias,) if alias else ())
    return Record(f"sb{i}", net, names, ipv4=f"10.{1 if net == 'n1' else 2}.0.{i + 1}")


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 6), st.sampled_from(["n1", "n2"]),
                         st.sampled_from([None, "web", "db"])), max_size=25)


def answers(rs: RecordSet):
    out = {}
    for asker in [f"sb{i}" for i in range(7)]:
        for name in [f"s{i}" for i in range(7)] + ["web", "db", "s1.red", "s2.blue"]:
            out[(asker, name)] = sorted(rs.lookup(asker, name, A).values)
        for i in range(7):
            for net in (1, 2):
                out[(asker, i, net)] = rs.lookup(asker, f"{i + 1}.0.{net}.10.in-addr.arpa", PTR).values
    return out


@settings(max_examples=150, deadline=None)
@given(ops)
def test_incremental_equals_rebuild(steps):
    current: dict = {}
    rs = RecordSet([], NETS)
    for is_add, i, net, alias in steps:
        key = (f"sb{i}", net)
        if is_add:
            r = rec(i, net, alias)
            current[key] = r
            rs.update(add=[r])
        else:
            current.pop(key, None)
            rs.update(remove=[key])
        assert answers(rs) == answers(RecordSet(list(current.values()), NETS))
