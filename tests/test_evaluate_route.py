"""The evaluate routes check the read key by hand and are documented by hand (no FastAPI dependency
or parameter solving on the hot path): they must answer every Authorization header like a route that
uses the dependency, and the OpenAPI document must still describe their path, query, body and scope.
Keys are required here, reads too."""

import pytest
import torch
from conftest import assert_problem, new_key, register_loss

from app.core.config import Settings
from ml3core import load_loss


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("evaluate_route"), runner="none", auth="on",
                    auth_reads=True, eval_rate=0)


@pytest.fixture(scope="module")
def loss(Session):
    register_loss(Session, "routed")
    return "routed"


def _headers(Session) -> dict[str, dict]:
    """Authorization headers a client may send: none, other schemes, malformed, unknown, revoked,
    too weak for nothing (read is the least scope), and good ones spelled in different ways."""
    token = new_key(Session, "read")["Authorization"].removeprefix("Bearer ")
    revoked = new_key(Session, "read", revoked=True)["Authorization"]
    return {
        "none": {}, "basic": {"Authorization": f"Basic {token}"}, "scheme only": {"Authorization": "Bearer"},
        "scheme and space": {"Authorization": "Bearer "}, "unknown": {"Authorization": "Bearer ml3_0000_nope"},
        "revoked": {"Authorization": revoked}, "good": {"Authorization": f"Bearer {token}"},
        "lower case": {"Authorization": f"bearer {token}"}, "padded": {"Authorization": f"BEARER   {token}  "},
        "submit": new_key(Session, "submit"), "admin": new_key(Session, "admin"),
    }


def test_the_inline_key_check_answers_like_the_dependency(client, Session, loss):
    q = {"pred": "0.1,0.5", "target": "0,1"}
    statuses = set()
    for name, headers in _headers(Session).items():
        reference = client.get(f"/v1/losses/{loss}", headers=headers)  # a read route with the READ dependency
        for r in (client.get(f"/v1/losses/{loss}/evaluate", params=q, headers=headers),
                  client.post(f"/v1/losses/{loss}/evaluate", json={"pred": [0.1, 0.5], "target": [0, 1]},
                              headers=headers)):
            assert r.status_code == reference.status_code, (name, r.text, reference.text)
            if r.status_code == 200:
                assert r.json()["id"] == f"{loss}:1", name
            else:
                body = assert_problem(r, reference.status_code, reference.json()["code"])
                assert r.headers.get("www-authenticate") == reference.headers.get("www-authenticate"), name
                assert body["detail"] == reference.json()["detail"], name
        statuses.add(reference.status_code)
    assert statuses == {200, 401}  # both sides of the check were reached


def test_the_evaluate_routes_are_documented_as_before(client):
    doc = client.get("/openapi.json").json()
    ops = doc["paths"]["/v1/losses/{loss_id}/evaluate"]
    shown = doc["paths"]["/v1/losses/{loss_id}"]["get"]  # a route whose parameters FastAPI writes itself
    path_param = next(p for p in shown["parameters"] if p["name"] == "loss_id")
    for method, op in ops.items():
        params = {(p["in"], p["name"]): p for p in op["parameters"]}
        assert params[("path", "loss_id")]["required"] is True, method
        assert params[("path", "loss_id")]["schema"] == path_param["schema"], method
        assert op["security"] == shown["security"] == [{"HTTPBearer": ["read"]}], method  # reads need keys here
        assert "API key scope: read." in op["description"], method
        assert op["tags"] == ["losses"] and "422" in op["responses"], method
    query = {p["name"] for p in ops["get"]["parameters"] if p["in"] == "query"}
    assert query == {"pred", "target", "x", "reduction", "return_grad", "logits", "labels"}
    body = ops["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"pred", "target", "logits", "labels", "x", "shape", "reduction", "return_grad",
            "encoding"} <= set(body["properties"])
    assert set(ops) == {"get", "post"}


def test_other_methods_on_the_evaluate_path_are_a_405_problem(client, Session, loss):
    admin = new_key(Session, "admin")
    for method in ("PUT", "DELETE", "PATCH"):
        r = client.request(method, f"/v1/losses/{loss}/evaluate", headers=admin)
        assert_problem(r, 405, "method_not_allowed")
        assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    head = client.head(f"/v1/losses/{loss}/evaluate?pred=1&target=1", headers=admin)
    assert head.status_code == 405 and head.content == b""


def test_evaluate_requests_are_counted_under_their_route(client, Session, loss):
    reader = new_key(Session, "read")
    stats = client.app.state.stats["requests"]
    key = ("GET", "/v1/losses/{loss_id}/evaluate", 200)
    before = stats[key]
    client.get(f"/v1/losses/{loss}/evaluate", params={"pred": "1", "target": "0"}, headers=reader)
    assert stats[key] == before + 1


def test_evaluate_still_follows_a_new_version_and_gives_the_module_s_numbers(client, Session, loss):
    """The module's weights are cached per loaded version: a new version is evaluated with its own."""
    reader = new_key(Session, "read")
    q = {"pred": "0.3,1.5,-2", "target": "0,1,-1"}
    before = client.get(f"/v1/losses/{loss}/evaluate", params=q, headers=reader).json()
    register_loss(Session, loss, seed=7)
    after = client.get(f"/v1/losses/{loss}/evaluate", params=q, headers=reader).json()
    assert (before["id"], after["id"]) == (f"{loss}:1", f"{loss}:2")
    for got in (before, after):
        local = load_loss(client.get(f"/v1/losses/{got['id']}/artifact", headers=reader).content)
        want = float(local(torch.tensor([0.3, 1.5, -2.0]), torch.tensor([0.0, 1.0, -1.0])))
        assert got["loss"] == pytest.approx(want, rel=1e-6)
    assert before["loss"] != after["loss"]



def test_json_numbers_become_the_float32_values_torch_would_make():
    """Flat lists go through array("f"), not torch.tensor: the same float32 for every double (ties and
    values between two float32 included), ints and bools; anything else is torch.tensor's to refuse."""
    from app.services.evaluate import to_tensor

    g = torch.Generator().manual_seed(0)
    doubles = (torch.randn(5000, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-30, 30, (5000,),
                                                                                           generator=g)).tolist()
    f32 = torch.randn(1000, generator=g).double()
    ulp = torch.nextafter(f32.float(), torch.tensor(float("inf"))).double() - f32
    doubles += (f32 + ulp / 2).tolist() + (f32 - ulp / 3).tolist()  # exact ties and near-ties between float32
    doubles += [0, 1, -7, 2**24 + 1, 2**60 + 3, True, False, -0.0, 5e-324, 1.5e-45]
    for values in (doubles, doubles[:64], doubles[:3], doubles * 14):  # small, tiny and over one chunk
        got = to_tensor(values, "pred", 10**6)
        assert got.dtype == torch.float32 and got.shape == (len(values),)
        assert torch.equal(got, torch.tensor(values, dtype=torch.float32))


@pytest.mark.parametrize("body", [b'{"pred": [1' + b"0" * 400 + b'], "target": [1]}',  # beyond a double
                                  b'{"pred": [1, [2]], "target": [1, 2]}', b'{"pred": [1, null], "target": [1, 2]}',
                                  b'{"pred": [1, "2"], "target": [1, 2]}'])
def test_lists_that_are_not_numbers_are_a_422(client, Session, loss, body):
    r = client.post(f"/v1/losses/{loss}/evaluate", content=body,
                    headers={**new_key(Session, "read"), "content-type": "application/json"})
    assert_problem(r, 422, "invalid")


def test_served_values_are_bitwise_those_of_the_downloaded_loss(client, Session, loss):
    reader = new_key(Session, "read")
    local = load_loss(client.get(f"/v1/losses/{loss}/artifact", headers=reader).content)
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 64, 300):
        pred, target = (torch.randn(n, generator=g) * 3).tolist(), torch.randn(n, generator=g).tolist()
        body = {"pred": pred, "target": target, "x": [0.0] * n}
        got = client.post(f"/v1/losses/{loss}/evaluate", json={**body, "reduction": "none"}, headers=reader).json()
        mean = client.post(f"/v1/losses/{loss}/evaluate", json=body, headers=reader).json()
        want = local(torch.tensor(pred), torch.tensor(target), x=torch.zeros(n), reduction="none")
        assert got["loss"] == want.tolist()  # exactly: the same float32 inputs and the same ops
        assert mean["loss"] == float(want.mean())
