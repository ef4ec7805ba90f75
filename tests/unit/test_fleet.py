"""The fleet's pieces that need no cluster: the board that remembers what replicas report, the expert
replicas' deployment options from settings, and the one-machine fleet view."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.scaleout.fleet_board import FleetBoard
from server.settings import Settings

pytest.importorskip("ray", reason="the ray extra is not installed")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report(replica: str, **fields: object) -> dict[str, object]:
    return {"replica": replica, "engine": "transformers", "resident_adapters": [], "in_flight": 0,
            "healthy": True, "problems": [], **fields}


def test_board_keeps_each_replicas_last_report_and_marks_silent_ones_unhealthy() -> None:
    clock = Clock()
    board = FleetBoard(stale_after=10, forget_after=60, clock=clock)
    board.report(report("a", resident_adapters=["sql-v1"]))
    clock.now = 5
    board.report(report("b"))
    board.report(report("a", resident_adapters=["sql-v1", "math-v1"], in_flight=2))
    views = {v["replica"]: v for v in board.replicas()}
    assert views["a"]["resident_adapters"] == ["sql-v1", "math-v1"] and views["a"]["in_flight"] == 2
    assert all(v["healthy"] for v in views.values())

    clock.now = 16  # b last reported at 5: silent for 11 s
    board.report(report("a"))
    views = {v["replica"]: v for v in board.replicas()}
    assert views["a"]["healthy"] and not views["b"]["healthy"]
    assert "no report for 11 s" in views["b"]["problems"][-1]

    clock.now = 70  # b is forgotten; a replica that leaves on purpose goes at once
    assert [v["replica"] for v in board.replicas()] == ["a"]
    board.leave("a")
    assert board.replicas() == []


def test_expert_replicas_are_fixed_or_autoscaled_from_settings() -> None:
    from server.scaleout.app import expert_replica_options

    fixed = expert_replica_options(Settings(scale_out={"expert_replicas": 3}))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    scaled = expert_replica_options(Settings(scale_out={
        "autoscaling": True, "min_expert_replicas": 1, "expert_replicas": 1, "max_expert_replicas": 3,
        "target_ongoing_requests": 2, "upscale_delay_seconds": 1, "downscale_delay_seconds": 7,
        "replica_drain_seconds": 45}))
    assert scaled["num_replicas"] == "auto"
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 3,
                                            "target_ongoing_requests": 2, "upscale_delay_s": 1,
                                            "downscale_delay_s": 7}
    assert scaled["graceful_shutdown_timeout_s"] == 45


def test_autoscaling_bounds_must_hold_the_starting_count() -> None:
    with pytest.raises(ValidationError, match="min_expert_replicas"):
        Settings(scale_out={"autoscaling": True, "min_expert_replicas": 2, "expert_replicas": 1})
    Settings(scale_out={"min_expert_replicas": 2, "expert_replicas": 1})  # bounds unused without autoscaling
