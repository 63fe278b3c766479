"""The request schemas: pure checks, no daemon."""
import pytest

from nsnet.client import api_path
from nsnet.daemon import api, schema


def test_every_route_has_a_schema_and_every_schema_a_route():
    routes = {(m, p.pattern) for m, p, _, _ in api.ROUTES}
    assert len(routes) == len(schema.ENDPOINTS)
    for method, path in schema.ENDPOINTS:
        assert (method, "^" + path.replace("{ref}", "([^/]+)") + "$") in routes


@pytest.mark.parametrize("body,message", [
    ({"Name": "n", "Internal": "no"}, "Internal must be true or false, not a string"),
    ({"Name": "n", "Internal": 1}, "Internal must be true or false, not a number"),
    ({"Name": "n", "Labels": {"a": 1}}, "Labels['a'] must be a string, not a number"),
    ({"Name": "n", "Subnets": "10.0.0.0/8"}, "Subnets must be a list, not a string"),
    ({"Name": "n", "Typo": 1}, "unknown field 'Typo' in the body"),
    ({"Driver": "bridge"}, "the body needs the field Name"),
    ({"Name": None}, "Name must be a string, not null"),
    ({"Name": "n", "Labels": {"k": "x" * 4097}}, "Labels['k'] is too long"),
])
def test_network_create_refusals_name_the_field(body, message):
    with pytest.raises(schema.BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        schema.check(schema.NETWORK_CREATE, body, "the body")


def test_nested_fields_and_nulls():
    schema.check(schema.SANDBOX_RUN, {"Cmd": ["true"], "Name": None, "Networks": [{"Network": "a", "IP": None}]},
                 "the body")
    with pytest.raises(schema.BadRequest, match=r"Networks\[0\].Aliases must be a list"):
        schema.check(schema.SANDBOX_RUN, {"Cmd": ["true"], "Networks": [{"Network": "a", "Aliases": "x"}]},
                     "the body")
    with pytest.raises(schema.BadRequest, match="Pid must be an integer, not a boolean"):
        schema.check(schema.SANDBOX_RUN, {"Cmd": ["true"], "Pid": True}, "the body")


def test_bodies_and_queries():
    assert schema.body(None, b"") == {}
    with pytest.raises(schema.BadRequest, match="takes no body"):
        schema.body(None, b"{}")
    with pytest.raises(schema.BadRequest, match="not valid JSON"):
        schema.body(schema.NO_BODY, b"[" * 100000)
    q = {"force": schema.FLAG, "t": {"type": "number", "min": 0, "max": 10}}
    assert schema.query(q, {"force": ["true"], "t": ["2.5"]}) == {"force": True, "t": 2.5}
    for bad in ({"force": ["yes"]}, {"t": ["nan"]}, {"t": ["11"]}, {"x": ["1"]}, {"force": ["1", "0"]}):
        with pytest.raises(schema.BadRequest):
            schema.query(q, bad)


def test_api_path_quotes_each_segment():
    assert api_path("sandboxes", "web?force=1") == "/sandboxes/web%3Fforce%3D1"
    assert api_path("networks", "a b", "connect") == "/networks/a%20b/connect"
    assert api_path("sandboxes", "../x", force=True, all=False, t=None) == "/sandboxes/..%2Fx?force=1"
    assert api_path("sandboxes", "web", "stop", t=0.0) == "/sandboxes/web/stop?t=0.0"   # 0 is a value, not "not given"


def test_no_string_holds_a_nul():
    """The kernel takes none (argv, paths, names): refused at the edge, not a 500 from exec."""
    with pytest.raises(schema.BadRequest, match=r"Cmd\[1\] contains a NUL"):
        schema.check(schema.SANDBOX_RUN, {"Cmd": ["sleep", "3\x000"]}, "the body")
