"""`GET /admin/fleet` on one machine: the gateway and its own backend as the one replica, in process."""

from __future__ import annotations

import httpx

from tests.support.inprocess import InProcessServer


def test_the_fleet_view_lists_the_gateway_and_the_local_engine_with_its_adapters(
        admin: httpx.Client, http: httpx.Client, app_server: InProcessServer) -> None:
    assert http.get("/admin/fleet").status_code == 401  # admin only
    fleet = admin.get("/admin/fleet").json()
    experts = admin.get("/admin/experts").json()
    [gateway] = fleet["gateways"]
    assert gateway["registry_version"] == experts["registry_version"] and gateway["backend"] == "fake"
    [replica] = fleet["replicas"]
    adapters = sorted(e["name"] for e in experts["data"] if e["kind"] == "adapter")
    assert (replica["engine"], replica["healthy"], replica["resident_adapters"]) == ("fake", True, adapters)

    app_server.backend.problems.append("the engine stopped")
    try:
        [sick] = admin.get("/admin/fleet").json()["replicas"]
    finally:
        app_server.backend.problems.clear()
    assert not sick["healthy"] and sick["problems"] == ["the engine stopped"]
