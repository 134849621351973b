"""Drives a mesh-agent with the off-the-shelf OPA client library `opa-python-client` (3.0.0).

Usage: python check.py HOST PORT

Every request goes through the library's synchronous `OpaClient`; there is no hand-written HTTP
here. Each step is a short function; the first failed check exits non-zero with a message.
"""

import http.server
import json
import os
import sys
import tempfile
import threading
import traceback

import requests
from opa_client import OpaClient
from opa_client.errors import (
    ConnectionsError,
    PatchDataError,
    PolicyNotFoundError,
    RegoParseError,
)

POLICY_ID = "example/authz.rego"
PACKAGE = "example.authz"

POLICY = """package example.authz

import rego.v1

default allow := false

allow if input.user in data.example.admins

admin_count := count(data.example.admins)
"""

# Unterminated rule body: a parse error that the library's v0-to-v1 rewrite does not retry.
BROKEN_POLICY = """package example.authz

import rego.v1

allow if {
    input.user ==
"""

def step(name):
    print(f"--- {name}", flush=True)


def allow(client, user):
    """The decision for `user`: POST /v1/data/example/authz/allow {"input": {"user": ...}}."""
    return client.query_rule({"user": user}, PACKAGE, "allow")


def check_health(client):
    step("check_health")
    assert client.check_health() is True, "check_health() is not True: GET /health did not answer 200"


def check_connection(client):
    step("check_connection")
    try:
        ok = client.check_connection()
    except ConnectionsError as error:
        raise AssertionError(f"check_connection() raised {error!r} (cause: {error.__cause__!r})")
    assert ok is True, f"check_connection() returned {ok!r}, expected True"


def upload_policy(client):
    step("update_policy_from_string")
    ok = client.update_policy_from_string(POLICY, POLICY_ID)
    assert ok is True, f"update_policy_from_string() returned {ok!r}, expected True"


def list_policies(client):
    step("get_policies_list")
    ids = client.get_policies_list()
    assert ids == [POLICY_ID], f"get_policies_list() returned {ids!r}, expected [{POLICY_ID!r}]"


def read_policy(client):
    step("get_policy")
    policy = client.get_policy(POLICY_ID)
    result = policy.get("result")
    assert isinstance(result, dict), f"get_policy() has no result object: {policy!r}"
    assert result.get("id") == POLICY_ID, f"get_policy() id is {result.get('id')!r}: {policy!r}"
    assert result.get("raw") == POLICY, f"get_policy() raw text differs: {result.get('raw')!r}"


def write_admins(client, admins):
    """Makes data.example.admins `admins`.

    The library only accepts a dict (a list raises TypeException before any request), so the list
    goes in as {"admins": [...]} at `example`: PUT /v1/data/example.
    """
    step(f"update_or_create_data admins={admins}")
    ok = client.update_or_create_data({"admins": admins}, "example")
    assert ok is True, f"update_or_create_data() returned {ok!r}, expected True"


def check_decisions(client, expected):
    step(f"query_rule allow {expected}")
    for user, want in expected.items():
        answer = allow(client, user)
        assert answer.get("result") is want, (
            f"allow for {user}: expected {want}, got {answer!r}"
        )
        assert answer.get("decision_id"), f"allow for {user}: no decision_id in {answer!r}"


def read_admins(client, admins):
    step("get_data example/admins")
    data = client.get_data("example/admins")
    assert data.get("result") == admins, f"get_data('example/admins') returned {data!r}, expected {admins!r}"
    count = client.query_rule({}, PACKAGE, "admin_count")
    assert count.get("result") == len(admins), f"admin_count: expected {len(admins)}, got {count!r}"


def upload_broken_policy(client):
    step("update_policy_from_string (broken)")
    try:
        client.update_policy_from_string(BROKEN_POLICY, POLICY_ID)
    except RegoParseError as error:
        assert error.expression == "invalid_parameter", f"RegoParseError code is {error.expression!r}"
        assert error.errors, f"RegoParseError carries no errors: {error}"
        location = error.errors[0].get("location", {})
        assert {"file", "row", "col"} <= location.keys(), f"error without a location: {error.errors!r}"
        print(f"    raised as expected: {error}", flush=True)
    else:
        raise AssertionError("update_policy_from_string() accepted a broken policy")
    read_policy(client)
    check_decisions(client, {"alice": True})


def check_health_parameters(client):
    step("check_health bundles/plugins, wait_for_ready")
    # The seed's Kubernetes readiness probe asks /health?bundles=true.
    assert client.check_health({"bundles": True}) is True, "GET /health?bundles=true is not 200"
    assert client.check_health({"plugins": True}) is True, "GET /health?plugins=true is not 200"
    assert client.wait_for_ready(timeout=10) is True


def read_server_documents(client, host, port):
    step("get_config, get_status, get_metrics")
    config = client.get_config()
    assert config.get("result", {}).get("labels", {}).get("id"), f"get_config(): {config!r}"
    status = client.get_status()
    assert "plugins" in status.get("result", {}), f"get_status(): {status!r}"
    metrics = client.get_metrics()
    assert "mesh_agent_build_info" in metrics, "get_metrics() lacks mesh_agent_build_info"


def policies_info(client, host, port):
    step("get_policies_info")
    info = client.get_policies_info()
    entry = info.get(POLICY_ID)
    assert entry, f"get_policies_info() has no {POLICY_ID!r}: {info!r}"
    root = f"http://{host}:{port}/v1/data/example/authz"
    assert entry["path"] == root, f"get_policies_info() path is {entry['path']!r}, expected {root!r}"
    assert set(entry["rules"]) == {f"{root}/allow", f"{root}/admin_count"}, f"rules: {entry['rules']!r}"
    # And the URLs it gives answer.
    answer = requests.post(f"{root}/allow", json={"input": {"user": "alice"}}, timeout=30).json()
    assert answer.get("result") is True, f"POST {root}/allow: {answer!r}"


def patch_admins(client):
    step("patch_data")
    ok = client.patch_data("example", [{"op": "add", "path": "/admins/-", "value": "carol"}])
    assert ok is True, f"patch_data() returned {ok!r}"
    data = client.get_data("example/admins")
    assert data.get("result") == ["alice", "bob", "carol"], f"after patch_data(): {data!r}"
    try:
        client.patch_data("example", [{"op": "remove", "path": "/nobody"}])
    except PatchDataError as error:
        print(f"    raised as expected: {error}", flush=True)
    else:
        raise AssertionError("patch_data() accepted a patch that does not apply")
    ok = client.patch_data("example", [{"op": "remove", "path": "/admins/2"}])
    assert ok is True


def queries(client):
    step("get_data with input, query_rule with metrics")
    answer = client.get_data("example/authz/allow", {"input": json.dumps({"user": "alice"})})
    assert answer.get("result") is True, f"GET .../allow?input=: {answer!r}"
    answer = client.query_rule({"user": "alice"}, PACKAGE, "allow", {"metrics": True})
    assert answer.get("result") is True and "metrics" in answer, f"query_rule(metrics): {answer!r}"

    step("ad_hoc_query")
    rows = client.ad_hoc_query("x := data.example.admins[_]").get("result")
    assert sorted(r["x"] for r in rows) == ["alice", "bob"], f"ad_hoc_query(): {rows!r}"
    rows = client.ad_hoc_query('input.user == "alice"', {"user": "alice"}).get("result")
    assert rows == [{}], f"ad_hoc_query() with input: {rows!r}"
    answer = client.ad_hoc_query('input.user == "alice"', {"user": "bob"})
    assert "result" not in answer, f"ad_hoc_query() false (OPA omits result): {answer!r}"
    try:
        client.ad_hoc_query("x := ")
    except requests.exceptions.HTTPError as error:
        assert error.response.status_code == 400, f"a bad query: {error.response.status_code}"
    else:
        raise AssertionError("ad_hoc_query() accepted a query that does not parse")

    step("bulk_query_rule")
    values = client.bulk_query_rule([{"user": "alice"}, {"user": "zed"}], PACKAGE, "allow")
    assert values == [True, False], f"bulk_query_rule(list): {values!r}"
    values = client.bulk_query_rule({"a": {"user": "bob"}, "z": {"user": "zed"}}, PACKAGE, "allow")
    assert values == {"a": True, "z": False}, f"bulk_query_rule(dict): {values!r}"


def policy_files(client):
    step("policy_to_file, update_policy_from_file, update_policy_from_url")
    with tempfile.TemporaryDirectory() as scratch:
        assert client.policy_to_file(POLICY_ID, scratch, "saved.rego") is True
        with open(os.path.join(scratch, "saved.rego"), encoding="utf-8") as saved:
            assert saved.read() == POLICY, "policy_to_file() wrote other text"
        assert client.update_policy_from_file(os.path.join(scratch, "saved.rego"), POLICY_ID) is True

        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=scratch, **kw)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/saved.rego"
            assert client.update_policy_from_url(url, POLICY_ID) is True
        finally:
            server.shutdown()
    read_policy(client)


def expression_text(expr):
    """An expression of OPA's AST JSON as short text: `eq(input.user, "alice")`."""

    def term(t):
        if t["type"] == "ref":
            parts = [t["value"][0]["value"]]
            parts += [p["value"] for p in t["value"][1:]]
            return ".".join(str(p) for p in parts)
        if t["type"] in ("array", "set"):
            return json.dumps([v["value"] for v in t["value"]])
        return json.dumps(t["value"])

    terms = expr["terms"]
    text = term(terms) if isinstance(terms, dict) else f"{term(terms[0])}({', '.join(term(t) for t in terms[1:])})"
    return ("not " if expr.get("negated") else "") + text


def compile_queries(client):
    step("compile_query (partial evaluation)")
    # The user is unknown: allow holds when input.user is one of the admins (the default cannot
    # make `allow == true` hold, so it is not part of the answer).
    answer = client.compile_query("data.example.authz.allow == true", unknowns=["input"])
    queries = answer.get("result", {}).get("queries")
    assert queries is not None, f"compile_query(): no queries in {answer!r}"
    got = [[expression_text(e) for e in q] for q in queries]
    assert got == [['internal.member_2(input.user, ["alice", "bob"])']], f"compile_query(): {got!r}"
    assert queries[0][0]["index"] == 0, f"compile_query(): {queries!r}"

    # Known input, nothing unknown: always true is one empty query, never true no queries.
    answer = client.compile_query("data.example.authz.allow == true", {"user": "alice"}, unknowns=[])
    assert answer == {"result": {"queries": [[]]}}, f"compile_query() always true: {answer!r}"
    answer = client.compile_query("data.example.authz.allow == true", {"user": "zed"}, unknowns=[])
    assert answer == {"result": {}}, f"compile_query() never true: {answer!r}"

    # Partly known: the known part is evaluated, the rest stays.
    answer = client.compile_query(
        'input.resource.owner == input.user; input.user != "zed"', {"user": "alice"}, unknowns=["input.resource"]
    )
    got = [[expression_text(e) for e in q] for q in answer["result"]["queries"]]
    assert got == [['eq(input.resource.owner, "alice")']], f"compile_query() partly known: {got!r}"

    # What the agent cannot partially evaluate is refused, with where: `allow == false` holds
    # when no body does, through the default.
    try:
        client.compile_query("data.example.authz.allow == false", unknowns=["input"])
    except requests.exceptions.HTTPError as error:
        body = error.response.json()
        assert error.response.status_code == 501, f"compile_query(allow == false): {error.response.status_code}"
        location = body["errors"][0]["location"]
        assert location == {"file": POLICY_ID, "row": 5, "col": 1}, f"refusal location: {body!r}"
        print(f"    refused as expected: {body['message']}", flush=True)
    else:
        raise AssertionError("compile_query() answered a query whose default decides it")


def delete_data(client):
    step("delete_data example")
    assert client.delete_data("example") is True, "delete_data() did not return True"
    try:
        data = client.get_data("example/admins")
    except PolicyNotFoundError:
        pass
    else:
        raise AssertionError(f"data still there after delete_data(): {data!r}")
    check_decisions(client, {"alice": False})


def delete_policy(client):
    step("delete_policy")
    assert client.delete_policy(POLICY_ID) is True, "delete_policy() did not return True"
    try:
        policy = client.get_policy(POLICY_ID)
    except PolicyNotFoundError as error:
        assert error.expression == "resource_not_found", f"PolicyNotFoundError code is {error.expression!r}"
    else:
        raise AssertionError(f"policy still there after delete_policy(): {policy!r}")
    answer = allow(client, "alice")
    assert "result" not in answer, f"allow is still defined after delete_policy(): {answer!r}"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: check.py HOST PORT")
    host, port = sys.argv[1], int(sys.argv[2])
    # A generous timeout: the test machine may be busy compiling.
    with OpaClient(host=host, port=port, timeout=30) as client:
        check_health(client)
        check_connection(client)
        upload_policy(client)
        list_policies(client)
        read_policy(client)
        write_admins(client, ["alice"])
        check_decisions(client, {"alice": True, "bob": False})
        read_admins(client, ["alice"])
        write_admins(client, ["alice", "bob"])
        check_decisions(client, {"alice": True, "bob": True})
        read_admins(client, ["alice", "bob"])
        check_health_parameters(client)
        read_server_documents(client, host, port)
        policies_info(client, host, port)
        patch_admins(client)
        queries(client)
        policy_files(client)
        compile_queries(client)
        upload_broken_policy(client)
        delete_data(client)
        delete_policy(client)
    print("OK: opa-python-client works against the agent", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        sys.exit(f"FAILED: {error}")
    except Exception as error:  # A library error we did not expect: say which one, and where.
        traceback.print_exc()
        sys.exit(f"FAILED: {type(error).__name__}: {error}")
