"""Losses outside Python: every form the registry holds, exported as TorchScript (scripted, so its
``reduction`` argument still works) and as ONNX, gives the values of the loaded loss and of the evaluate
endpoint; ``GET /v1/losses/{id}/export`` and ``ml3 losses export`` serve them."""

import io
import sys

import pytest
import torch
from conftest import assert_problem, table_counts, wire_cli

from app.core.config import Settings
from app.services import registry
from ml3core import LearnedLoss, LossSpec, export_onnx, export_torchscript, init_loss_params
from ml3core.artifact import Bundle
from ml3core.export import onnx_inputs

# one architecture per form and variant a bundle can have (ml3core/portable.py: FORMS, weights, per_output)
CASES = {
    "net": dict(inputs=["pred", "target"]),
    "net-x-bias": dict(inputs=["pred", "target", "x"], x_dim=2, bias=True, activation="elu"),
    "net-per-output": dict(inputs=["pred", "target"], per_output=True, pred_dim=2, output="square",
                           activation="leaky_relu"),
    "weighted_se": dict(form="weighted_se", inputs=["target", "x"], x_dim=1, output="exp", pred_dim=2,
                        activation="tanh"),
    "weighted_se-weight-per-output": dict(form="weighted_se", inputs=["target", "x", "level", "abs_error"], x_dim=3,
                                          pred_dim=2, weights="per_output", output="exp", activation="gelu"),
    "weighted_se-per-output": dict(form="weighted_se", inputs=["target"], per_output=True, pred_dim=3, bias=True,
                                   activation="silu"),
    "ce_classwise": dict(form="ce_classwise", inputs=["prob", "target", "logprob"], output="linear", bias=True),
    "weighted_ce": dict(form="weighted_ce", inputs=["ce", "target_prob", "max_prob"], output="exp",
                        activation="sigmoid"),
}
CLASSIFICATION = {"ce_classwise", "weighted_ce"}


def bundle_of(case: str, extra: dict | None = None) -> Bundle:
    spec = LossSpec(hidden=[8, 8], **CASES[case])
    g = torch.Generator().manual_seed(len(case))
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in init_loss_params(spec, g).items()}
    family = "digits" if spec.form in CLASSIFICATION else "sine"
    return Bundle.build(params, spec, {"family": family}, {"inner_lr": 1e-3}, {}, extra)


def batch(loss: LearnedLoss, rows: int = 9) -> dict:
    """Inputs by name, as the ONNX graph takes them (and the loaded loss, positionally)."""
    torch.manual_seed(rows)
    if loss.arch.get("form") in CLASSIFICATION:
        return {"logits": torch.randn(rows, 4), "labels": torch.arange(rows) % 4}
    return {k: torch.randn(v.shape) for k, v in onnx_inputs(loss, rows).items()}


def scripted(loss: LearnedLoss):
    return torch.jit.load(io.BytesIO(export_torchscript(loss)))


@pytest.mark.parametrize("case", CASES)
def test_torchscript_gives_the_loaded_losss_values_and_gradients(case):
    loss = bundle_of(case).module()
    module = scripted(loss)
    assert isinstance(module, torch.jit.ScriptModule) and "reduction" in module.code  # scripted, not traced
    args = list(batch(loss).values())
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(module(*args, reduction=reduction), loss(*args, reduction=reduction),
                                   atol=1e-5, rtol=1e-5)
    first = args[0].clone().requires_grad_()
    want = torch.autograd.grad(loss(first, *args[1:]), first)[0]
    got = torch.autograd.grad(module(first, *args[1:]), first)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if case not in CLASSIFICATION:  # a flat vector of scalar predictions, as load_loss takes it
        flat = bundle_of("net").module()
        p, t = torch.randn(5), torch.randn(5)
        torch.testing.assert_close(scripted(flat)(p, t), flat(p, t), atol=1e-6, rtol=1e-6)


def test_torchscript_keeps_raw_units_and_refuses_bad_labels():
    extra = {"input_scales": {"pred": [2.0, 0.5], "target": [2.0, 0.5], "x": [3.0]},
             "input_offsets": {"pred": [1.0, -1.0], "target": [1.0, -1.0], "x": [0.5]}}
    b = bundle_of("weighted_se", extra)
    raw = LearnedLoss(b.params(), b.spec, raw_units=True)
    args = list(batch(raw).values())
    torch.testing.assert_close(scripted(raw)(*args), raw(*args), atol=1e-6, rtol=1e-6)
    assert abs(float(scripted(b.module())(*args)) - float(raw(*args))) > 1e-3  # the units matter here
    classifier = scripted(bundle_of("ce_classwise").module())
    with pytest.raises(torch.jit.Error, match="class indices"):
        classifier(torch.randn(2, 3), torch.tensor([0, 3]))


@pytest.mark.parametrize("case", CASES)
def test_onnx_gives_the_loaded_losss_values(case):
    ort = pytest.importorskip("onnxruntime")
    loss = bundle_of(case).module()
    session = ort.InferenceSession(export_onnx(loss))
    for rows in (3, 17):  # the batch axis is dynamic
        inputs = batch(loss, rows)
        (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        assert got.shape == () and float(got) == pytest.approx(float(loss(*inputs.values())), abs=1e-5, rel=1e-5)


# -- the service ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("export"), runner="none")


@pytest.fixture(scope="module")
def losses(Session):
    with Session.begin() as db:
        for case in CASES:
            registry.register(db, case.replace("_", "-"), bundle_of(case), None, None)
    return {case: case.replace("_", "-") for case in CASES}


def evaluated(client, name: str, inputs: dict) -> float:
    if "logits" in inputs:
        body = {"logits": inputs["logits"].tolist(), "labels": inputs["labels"].tolist()}
    else:
        body = {k: v.tolist() for k, v in inputs.items()}
    r = client.post(f"/v1/losses/{name}/evaluate", json=body)
    assert r.status_code == 200, r.text
    return r.json()["loss"]


@pytest.mark.parametrize("case", CASES)
def test_the_export_endpoint_gives_the_evaluate_endpoints_values(client, losses, case):
    name = losses[case]
    inputs = batch(bundle_of(case).module())
    want = evaluated(client, name, inputs)
    r = client.get(f"/v1/losses/{name}/export")  # torchscript, the default
    assert r.status_code == 200, r.text
    assert r.headers["x-loss-id"] == f"{name}:1" and f'filename="{name}-v1.pt"' in r.headers["content-disposition"]
    module = torch.jit.load(io.BytesIO(r.content))
    assert float(module(*inputs.values())) == pytest.approx(want, abs=1e-5, rel=1e-5)
    ort = pytest.importorskip("onnxruntime")
    r = client.get(f"/v1/losses/{name}:1/export", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    (got,) = ort.InferenceSession(r.content).run(None, {k: v.numpy() for k, v in inputs.items()})
    assert float(got) == pytest.approx(want, abs=1e-5, rel=1e-5)


def test_export_refuses_what_it_cannot_do_with_a_problem_and_changes_nothing(client, losses, Session, monkeypatch):
    before = table_counts(Session)
    body = assert_problem(client.get("/v1/losses/net/export", params={"format": "pdf"}), 422, "invalid")
    assert "torchscript" in body["detail"] and "onnx" in body["detail"]
    assert_problem(client.get("/v1/losses/net/export", params={"format": "onnx", "size": "1"}), 422)
    assert_problem(client.get("/v1/losses/no-such-loss/export"), 404)
    monkeypatch.setitem(sys.modules, "onnx", None)  # a server without the extra export
    body = assert_problem(client.get("/v1/losses/net/export", params={"format": "onnx"}), 501, "exporter_missing")
    assert "[export]" in body["detail"]
    assert client.get("/v1/losses/net/export").status_code == 200  # TorchScript needs nothing more
    assert table_counts(Session) == before
    doc = client.get("/openapi.json").json()["paths"]["/v1/losses/{loss_id}/export"]["get"]
    assert {"200", "404", "422", "501"} <= set(doc["responses"])


def test_cli_losses_export_writes_the_file(client, losses, monkeypatch, capsys, tmp_path):
    from app.cli import main

    wire_cli(monkeypatch, client)
    out = tmp_path / "loss.pt"
    assert main(["losses", "export", "weighted-ce", "--format", "torchscript", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    loss = bundle_of("weighted_ce").module()
    inputs = batch(loss)
    torch.testing.assert_close(torch.jit.load(str(out))(*inputs.values()), loss(*inputs.values()), atol=1e-5,
                               rtol=1e-5)
    monkeypatch.chdir(tmp_path)
    assert main(["losses", "export", "net@nope", "--format", "onnx"]) == 1  # one line, no traceback
    assert capsys.readouterr().err.startswith("ml3: 404")
    assert main(["losses", "export", "net", "--format", "onnx"]) == 0
    assert (tmp_path / "net-v1.onnx").stat().st_size > 0
