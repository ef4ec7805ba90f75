"""Settings in groups: one load path (file, environment, flags) for every mode; the flat keys of the previous
release still work, each with a warning naming its new key; the configuration reference is generated from
the classes and the committed copy equals it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from server.settings import Settings
from server.settings.reference import markdown
from tests.support.server_process import REPO


def test_each_source_in_its_place_and_the_later_wins(tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"backend": {"kind": "vllm", "max_loras": 2},
                                      "limits": {"max_active_requests": 3}, "server": {"data_dir": "state"}}))
    environ = {"SWITCHYARD_LIMITS__MAX_ACTIVE_REQUESTS": "5", "SWITCHYARD_ROUTING__ROUTER_PARAMS__K": "7",
               "SWITCHYARD_SECURITY__API_KEYS": '["k-1"]', "SWITCHYARD_URL": "http://not-a-setting"}
    settings = Settings.load(config, environ, server={"port": 9001, "host": None})
    assert settings.backend.kind == "vllm" and settings.backend.max_loras == 2
    assert settings.limits.max_active_requests == 5  # the environment beats the file
    assert settings.routing.router_params == {"k": 7}  # converted to what the policy takes
    assert [key.get_secret_value() for key in settings.security.api_keys] == ["k-1"]
    assert settings.server.port == 9001 and settings.server.host == "127.0.0.1"  # an unset flag changes nothing
    assert settings.server.data_dir == tmp_path / "state"  # relative to the file


@pytest.mark.parametrize("origin", ["file", "environment", "argument"])
def test_a_flat_key_of_the_previous_release_works_and_names_its_new_key(
        origin: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flat = {"max_loras": "3", "backend": "vllm", "router_params": {"k": "4"}, "admin_token": "t0ken"}
    caplog.set_level(logging.WARNING, logger="switchyard.settings")
    if origin == "file":
        config = tmp_path / "flat.yaml"
        config.write_text(yaml.safe_dump(flat))
        settings = Settings.load(config, environ={})
    elif origin == "environment":
        settings = Settings.load(None, {"SWITCHYARD_MAX_LORAS": "3", "SWITCHYARD_BACKEND": "vllm",
                                        "SWITCHYARD_ROUTER_PARAMS__K": "4", "SWITCHYARD_ADMIN_TOKEN": "t0ken"})
    else:
        settings = Settings(**flat)
    assert settings.backend.max_loras == 3 and settings.backend.kind == "vllm"
    assert settings.routing.router_params == {"k": 4}
    assert settings.security.admin_token is not None and settings.security.admin_token.get_secret_value() == "t0ken"
    warnings = " ".join(record.getMessage() for record in caplog.records)
    for old, new in [("max_loras", "backend.max_loras"), ("backend", "backend.kind"),
                     ("router_params", "routing.router_params"), ("admin_token", "security.admin_token")]:
        assert f"'{old}'" in warnings and new in warnings, warnings
    if origin == "environment":
        assert "SWITCHYARD_SECURITY__ADMIN_TOKEN" in warnings


def test_an_unknown_key_in_a_group_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_lora\\b"):
        Settings.load(None, {"SWITCHYARD_BACKEND__MAX_LORA": "3"})


def test_a_replica_gets_the_gateways_effective_settings_secrets_included() -> None:
    settings = Settings.load(None, {"SWITCHYARD_SECURITY__ADMIN_TOKEN": "s3cret", "SWITCHYARD_BACKEND__MAX_LORAS": "5"})
    replica = Settings.model_validate(settings.transport())
    assert replica == settings
    assert replica.security.admin_token is not None and replica.security.admin_token.get_secret_value() == "s3cret"


def test_the_committed_configuration_reference_is_the_generated_one() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == markdown(), "run: switchyard config reference > docs/configuration.md"
    for group, fields in Settings().model_dump().items():
        for name in fields:
            assert f"`SWITCHYARD_{group.upper()}__{name.upper()}`" in committed
