"""Loss bundles: ``loss.safetensors`` + ``loss.json``; as a directory or a deterministic zip."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import zipfile
from dataclasses import dataclass

import torch
from safetensors.torch import save as st_save

from ._version import __version__
from .losses import LossSpec
from .portable import (
    FORMAT,
    FORMAT_VERSION,
    SPEC_FILE,
    WEIGHTS_FILE,
    LearnedLoss,
    bundle_sha256,
    parse_bundle,
    read_bundle_files,
)


def bundle_format_version(spec: LossSpec) -> int:
    """The oldest format that reads this loss right: older loaders refuse what they would misread."""
    if spec.form == "weighted_ce" or "abs_error" in spec.inputs:
        return FORMAT_VERSION  # 4
    if spec.weights != "shared":
        return 3
    return 1 if spec.form == "net" else 2


def environment_versions() -> dict:
    """The versions a bundle was written with: torch, ml3 and Python."""
    return {"torch": torch.__version__, "ml3": __version__, "python": platform.python_version()}


@dataclass
class Bundle:
    weights: bytes
    spec: dict

    @classmethod
    def build(cls, params: dict, loss_spec: LossSpec, task: dict, training: dict, metrics: dict,
              extra: dict | None = None) -> Bundle:
        """task: the family config (with ``family``); training: how phi was meta-trained."""
        tensors = {k: v.detach().cpu().float().contiguous() for k, v in params.items()}
        weights = st_save(tensors)
        spec = {
            "format": FORMAT,
            # an older loader reads form "net" bundles; it must refuse the forms it does not know
            "format_version": bundle_format_version(loss_spec),
            "architecture": loss_spec.architecture(),
            "input_order": list(loss_spec.inputs),
            "task_family": task.get("family"),
            "task": task,
            "training": training,
            "metrics": metrics,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "versions": environment_versions(),  # what wrote it (no loader reads it: older ones ignore it)
            **(extra or {}),
        }
        spec["sha256"] = bundle_sha256(weights, spec)  # the weights and this spec: an edit to either shows
        return cls(weights, spec)

    @classmethod
    def from_files(cls, files: dict) -> Bundle:
        parse_bundle(files, files.get("sha256"))  # verifies format and checksums
        return cls(files[WEIGHTS_FILE], json.loads(files[SPEC_FILE]))

    @classmethod
    def read(cls, source) -> Bundle:
        return cls.from_files(read_bundle_files(source))

    @property
    def sha256(self) -> str:
        """The whole bundle's checksum (the weights' alone for a bundle written before it existed)."""
        return self.spec.get("sha256") or self.spec["weights_sha256"]

    @property
    def files(self) -> dict:
        return {WEIGHTS_FILE: self.weights, SPEC_FILE: json.dumps(self.spec, indent=2, sort_keys=True).encode()}

    def to_zip(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in self.files.items():
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # same bytes every time
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        return buf.getvalue()

    def write_dir(self, path) -> None:
        os.makedirs(path, exist_ok=True)
        for name, data in self.files.items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)

    def loss_spec(self) -> LossSpec:
        arch = {k: v for k, v in self.spec["architecture"].items() if k != "type"}
        return LossSpec(**arch)

    def module(self) -> LearnedLoss:
        params, spec = parse_bundle(self.files)
        return LearnedLoss(params, spec)

    def params(self) -> dict:
        return parse_bundle(self.files)[0]
