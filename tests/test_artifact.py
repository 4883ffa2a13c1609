"""Bundles round-trip, load without the project, keep autograd, and refuse damage."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

import ml3core
from ml3core import LossBundleError, LossSpec, init_loss_params, load_loss
from ml3core.artifact import Bundle
from ml3core.losses import apply_loss
from ml3core.portable import bundle_sha256

PORTABLE = os.path.join(os.path.dirname(ml3core.__file__), "portable.py")


def make_bundle(inputs=("pred", "target"), **arch):
    spec = LossSpec(inputs=list(inputs), x_dim=1, **arch)
    params = init_loss_params(spec, torch.Generator().manual_seed(3))
    return Bundle.build(params, spec, {"family": "sine"}, {"inner_lr": 1e-3}, {"score": 1.0}), spec, params


def test_round_trip_dir_zip_and_bytes(tmp_path):
    bundle, spec, params = make_bundle()
    bundle.write_dir(tmp_path / "b")
    (tmp_path / "b.zip").write_bytes(bundle.to_zip())
    pred, target = torch.randn(7, 1), torch.randn(7, 1)
    expected = apply_loss(spec, params, pred, target)
    for source in (tmp_path / "b", str(tmp_path / "b.zip"), bundle.to_zip()):
        loss = load_loss(source)
        torch.testing.assert_close(loss(pred, target), expected)
    assert bundle.to_zip() == Bundle.read(tmp_path / "b").to_zip()  # deterministic bytes
    meta = json.loads((tmp_path / "b" / "loss.json").read_text())
    assert meta["format"] == "ml3-loss" and meta["input_order"] == ["pred", "target"]
    assert meta["architecture"]["hidden"] == [50, 50] and meta["task_family"] == "sine"


def test_gradients_flow_to_pred_and_match_the_functional_form():
    bundle, spec, params = make_bundle()
    loss = bundle.module()
    pred = torch.randn(9, 1, requires_grad=True)
    target = torch.randn(9, 1)
    loss(pred, target).backward()
    pred2 = pred.detach().clone().requires_grad_()
    apply_loss(spec, params, pred2, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    torch.testing.assert_close(pred.grad, pred2.grad)
    assert not any(p.requires_grad for p in loss.buffers())  # never trained by the user's optimizer
    flat = loss(pred.detach().view(-1), target.view(-1), reduction="none")  # 1-D inputs work too
    assert flat.shape == (9,)


def test_loss_reading_x_requires_x():
    bundle, spec, params = make_bundle(inputs=("x", "pred", "target"))
    loss = bundle.module()
    pred, target, x = torch.randn(4, 1), torch.randn(4, 1), torch.randn(4, 1)
    torch.testing.assert_close(loss(pred, target, x=x), apply_loss(spec, params, pred, target, x))
    with pytest.raises(ValueError, match="x="):
        loss(pred, target)


def test_standalone_loader_in_a_fresh_process(tmp_path):
    """The copyable loader needs torch + safetensors only: no project import at all."""
    bundle, spec, params = make_bundle()
    bundle.write_dir(tmp_path / "bundle")
    shutil.copy(PORTABLE, tmp_path / "ml3_loss.py")
    pred = [[0.1], [0.5], [-1.0]]
    target = [[0.0], [1.0], [2.0]]
    script = f"""
import json, sys, torch
from ml3_loss import load_loss
loss = load_loss({str(tmp_path / 'bundle')!r})
pred = torch.tensor({pred}, requires_grad=True)
value = loss(pred, torch.tensor({target}))
value.backward()
assert not [m for m in sys.modules if m.startswith(("ml3core", "app", "worker"))]
print(json.dumps({{"value": value.item(), "grad": pred.grad.view(-1).tolist()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    p = torch.tensor(pred, requires_grad=True)
    expected = apply_loss(spec, params, p, torch.tensor(target))
    expected.backward()
    assert got["value"] == pytest.approx(expected.item(), rel=1e-6)
    assert got["grad"] == pytest.approx(p.grad.view(-1).tolist(), rel=1e-5)


def test_corrupted_bundle_is_refused(tmp_path):
    bundle, _, _ = make_bundle()
    bundle.write_dir(tmp_path / "b")
    weights = bytearray((tmp_path / "b" / "loss.safetensors").read_bytes())
    weights[-3] ^= 0xFF
    (tmp_path / "b" / "loss.safetensors").write_bytes(bytes(weights))
    with pytest.raises(LossBundleError, match="sha256"):
        load_loss(tmp_path / "b")


def test_truncated_and_malformed_bundles_are_refused(tmp_path):
    bundle, _, _ = make_bundle()
    data = bundle.to_zip()
    with pytest.raises(LossBundleError, match="zip"):
        load_loss(data[: len(data) // 2])
    with pytest.raises(LossBundleError, match="no such"):
        load_loss(tmp_path / "missing")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "loss.json").write_text("{}")
    with pytest.raises(LossBundleError, match="missing loss.safetensors"):
        load_loss(tmp_path / "partial")
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("loss.json", "{not json")
        zf.writestr("loss.safetensors", bundle.weights)
    with pytest.raises(LossBundleError, match="JSON"):
        load_loss(bad.getvalue())
    newer = dict(bundle.spec, format_version=99)
    with pytest.raises(LossBundleError, match="newer"):
        Bundle.from_files({"loss.safetensors": bundle.weights, "loss.json": json.dumps(newer).encode()})
    truncated_weights = bundle.weights[:40]
    spec = dict(bundle.spec, weights_sha256=__import__("hashlib").sha256(truncated_weights).hexdigest())
    spec["sha256"] = bundle_sha256(truncated_weights, spec)
    with pytest.raises(LossBundleError, match="unreadable"):
        Bundle.from_files({"loss.safetensors": truncated_weights, "loss.json": json.dumps(spec).encode()})


def test_weighted_se_form_is_a_learned_weight_on_the_squared_error(tmp_path):
    """form "weighted_se": L = mean_i w_φ(target_i, x_i)·‖pred_i − target_i‖², w ≥ 0 from the net."""
    bundle, spec, params = make_bundle(inputs=("x", "target"), form="weighted_se", output="exp", hidden=[8], pred_dim=2)
    assert bundle.spec["format_version"] == 2 and make_bundle()[0].spec["format_version"] == 1
    bundle.write_dir(tmp_path / "w")
    loss = load_loss(tmp_path / "w")
    assert "form=weighted_se" in repr(loss)
    x, target = torch.randn(11, 1), torch.randn(11, 2)
    pred = target + torch.randn(11, 2)
    h = torch.cat([x, target], -1) @ params["layers.0.weight"].T  # the weight net by hand (zero biases)
    w = torch.exp(torch.relu(h) @ params["layers.1.weight"].T).squeeze(-1)
    torch.testing.assert_close(loss(pred, target, x=x), (w * (pred - target).pow(2).sum(-1)).mean())
    assert loss(target, target, x=x).item() == 0.0  # the minimum stays exactly on the data
    per_output = make_bundle(inputs=("target",), form="weighted_se", per_output=True, pred_dim=2)[0].module()
    assert per_output(pred, target, reduction="none").shape == (11, 2)
    # an older loader cannot silently read a weight as a loss: unknown forms are refused
    other = dict(bundle.spec, architecture={**bundle.spec["architecture"], "form": "quadratic"})
    other["sha256"] = bundle_sha256(bundle.weights, other)  # a consistent bundle of a form this loader lacks
    with pytest.raises(LossBundleError, match="unknown loss form"):
        Bundle.from_files({"loss.safetensors": bundle.weights, "loss.json": json.dumps(other).encode()})


def test_weighted_se_with_a_weight_per_output(tmp_path):
    """weights "per_output": L = mean_i mean_j w_φ,j(target_i, x_i)·(pred_ij − target_ij)², one weight per
    output from one net; at baseline init every weight is 1, so values and gradients are plain MSE."""
    bundle, spec, params = make_bundle(inputs=("target", "x"), form="weighted_se", weights="per_output",
                                       output="exp", init="baseline", hidden=[8], bias=True, pred_dim=3)
    # format 3: a format-2 loader refuses it rather than misread three weights as one
    assert params["layers.1.weight"].shape == (3, 8) and bundle.spec["format_version"] == 3
    assert bundle.spec["architecture"]["weights"] == "per_output"
    assert "weights" not in make_bundle(form="weighted_se", inputs=("target",), output="exp")[0].spec["architecture"]
    g = torch.Generator().manual_seed(5)
    x, target = torch.randn(13, 1, generator=g), torch.randn(13, 3, generator=g)
    pred = (target + torch.randn(13, 3, generator=g)).requires_grad_()
    apply_loss(spec, params, pred, target, x).backward()
    mse_pred = pred.detach().clone().requires_grad_()
    torch.nn.functional.mse_loss(mse_pred, target).backward()
    torch.testing.assert_close(apply_loss(spec, params, pred, target, x), torch.nn.functional.mse_loss(pred, target))
    torch.testing.assert_close(pred.grad, mse_pred.grad)
    # a trained weight net: joint j's error counts w_j(target, x) times, each point its own weights
    trained = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in params.items()}
    h = torch.relu(torch.cat([target, x], -1) @ trained["layers.0.weight"].T + trained["layers.0.bias"])
    w = torch.exp(h @ trained["layers.1.weight"].T + trained["layers.1.bias"])  # (13, 3)
    assert w.std(0).min() > 0.01 and (w.mean(0).max() - w.mean(0).min()) > 0.01  # varies by point and joint
    expected = (w * (pred.detach() - target).square()).mean(-1)
    torch.testing.assert_close(apply_loss(spec, trained, pred.detach(), target, x, "none"), expected)
    # the bundle round trip, and the minimum stays on the data
    trained_bundle = Bundle.build(trained, spec, {"family": "sine"}, {"inner_lr": 1e-3}, {"score": 1.0})
    trained_bundle.write_dir(tmp_path / "pj")
    loss = load_loss(tmp_path / "pj")
    torch.testing.assert_close(loss(pred.detach(), target, x=x), expected.mean())
    assert loss(target, target, x=x).item() == 0.0


@pytest.mark.parametrize("arch, loc", [
    ({"form": "cubic"}, "loss.form"),
    ({"form": "weighted_se", "inputs": ["pred", "target"]}, "loss.inputs"),
    ({"form": "weighted_se", "inputs": ["target"], "output": "linear"}, "loss.output"),
    ({"form": "weighted_se", "inputs": ["target"], "weights": "per_joint"}, "loss.weights"),
    ({"form": "net", "weights": "per_output"}, "loss.weights"),
    ({"form": "weighted_se", "inputs": ["target"], "weights": "per_output", "per_output": True}, "loss.weights")])
def test_weighted_se_settings_are_checked(arch, loc):
    with pytest.raises(ml3core.ConfigError) as e:
        LossSpec.from_dict(arch)
    assert e.value.loc == loc


def test_an_edited_spec_is_refused_and_an_older_bundle_still_loads(tmp_path):
    """The bundle's sha256 covers loss.json too: output softplus -> linear changes every value."""
    bundle, _, _ = make_bundle()
    assert bundle.sha256 == bundle.spec["sha256"] == bundle_sha256(bundle.weights, bundle.spec)
    assert bundle.sha256 != bundle.spec["weights_sha256"]
    bundle.write_dir(tmp_path / "b")
    reformatted = json.dumps(json.loads((tmp_path / "b" / "loss.json").read_text()))  # other spacing: same hash
    (tmp_path / "b" / "loss.json").write_text(reformatted)
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    assert torch.equal(load_loss(tmp_path / "b")(pred, target), bundle.module()(pred, target))
    edited = json.loads(reformatted)
    assert edited["architecture"]["output"] == "softplus"
    edited["architecture"]["output"] = "linear"
    (tmp_path / "b" / "loss.json").write_text(json.dumps(edited))
    with pytest.raises(LossBundleError, match="loss.json or loss.safetensors was changed"):
        load_loss(tmp_path / "b")
    with pytest.raises(LossBundleError, match="changed"):
        Bundle.from_files({"loss.safetensors": bundle.weights, "loss.json": json.dumps(edited).encode()})
    # a bundle written before the whole-bundle sha256: its weights are checked, and it loads
    old = {k: v for k, v in bundle.spec.items() if k != "sha256"}
    files = {"loss.safetensors": bundle.weights, "loss.json": json.dumps(old).encode()}
    assert Bundle.from_files(files).sha256 == bundle.spec["weights_sha256"]
    # ... unless the checksum it must have is known (a registry's ETag): then stripping sha256 does not help
    with pytest.raises(LossBundleError, match="expected"):
        Bundle.from_files({**files, "sha256": bundle.sha256})


def test_a_bundle_records_the_versions_that_wrote_it_under_its_checksum(tmp_path):
    import platform

    bundle, _, _ = make_bundle()
    assert bundle.spec["versions"] == {"torch": torch.__version__, "ml3": ml3core.__version__,
                                       "python": platform.python_version()}
    assert ml3core.__version__ and ml3core.__version__ != "0+unknown"  # the installed package's version
    assert load_loss(bundle.to_zip()).spec["versions"] == bundle.spec["versions"]
    edited = dict(bundle.spec, versions={**bundle.spec["versions"], "torch": "9.9"})  # covered by its sha256
    with pytest.raises(LossBundleError, match="changed"):
        Bundle.from_files({"loss.safetensors": bundle.weights, "loss.json": json.dumps(edited).encode()})
    # a bundle written before versions were recorded keeps its checksum and loads as before
    old = {k: v for k, v in bundle.spec.items() if k not in ("versions", "sha256")}
    old["sha256"] = bundle_sha256(bundle.weights, old)
    files = {"loss.safetensors": bundle.weights, "loss.json": json.dumps(old).encode()}
    assert Bundle.from_files({**files, "sha256": old["sha256"]}).sha256 == old["sha256"] != bundle.sha256
    assert "versions" not in load_loss(Bundle.from_files(files).to_zip()).spec
