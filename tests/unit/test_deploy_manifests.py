"""The Ray deployments are checked by Ray Serve's own config schema, and their settings by Switchyard's, so a
typo fails here rather than on a cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import Settings

pytest.importorskip("ray", reason="the ray extra is not installed")
from ray.serve.schema import ServeDeploySchema  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"


def configmap_settings_file(tmp_path: Path) -> Path:
    configmap = yaml.safe_load((REPO / "deploy" / "k8s" / "common" / "configmap.yaml").read_text())
    path = tmp_path / "switchyard.yaml"
    path.write_text(configmap["data"]["switchyard.yaml"])
    return path


def application(serve_config: dict[str, Any]) -> dict[str, Any]:
    [app] = ServeDeploySchema.model_validate(serve_config).applications
    assert app.import_path == "server.scaleout.app:build_app"
    return app.args


def test_the_rayservice_serve_config_and_its_settings_are_valid(tmp_path: Path) -> None:
    service = yaml.safe_load(RAYSERVICE.read_text())
    args = application(yaml.safe_load(service["spec"]["serveConfigV2"]))
    settings = Settings.load(configmap_settings_file(tmp_path), environ={}, **args["settings"])
    assert (settings.backend.kind, settings.backend.device) == ("vllm", "cuda")
    scale = settings.scale_out
    assert scale.autoscaling
    # One expert replica per GPU worker pod: the worker group's bounds are the replicas' bounds.
    [workers] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (scale.min_expert_replicas, scale.max_expert_replicas)
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The cluster runs the Ray release the project pins.
    pinned = re.search(r'"ray\[serve\]==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pinned and service["spec"]["rayClusterConfig"]["rayVersion"] == pinned.group(1)


def test_the_serve_deploy_config_is_valid(tmp_path: Path) -> None:
    args = application(yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text()))
    settings = Settings.load(configmap_settings_file(tmp_path), environ={}, **(args.get("settings") or {}))
    assert settings.scale_out.expert_replicas >= 1 and int(args["expert_replicas"]) >= 1
