"""Where the fleet's adapters live: each expert replica's last report, for the gateway's `GET /admin/fleet`
and its per-replica metrics.

Ray Serve routes a request to a replica that holds its adapter (model multiplexing), but nothing in Serve
says which replica holds which adapter, how busy it is, or what its cold loads cost. Each replica reports
that here when its adapters change and on every Serve health check (`ExpertReplica.check_health`); the
board keeps the last report per replica. A replica that stops reporting (killed, or its node gone) is
shown as not healthy once its report is `stale_after` old, and forgotten after `forget_after`; one that
Serve stops on purpose (scale-down) says so itself.

Gateways report here too (`report_gateway`): their registry version, the time they applied it, and
in-flight requests, after every change they apply and every few seconds. The fleet view lists them, a
gateway resumes the indexing jobs of gateways that stopped reporting, and `bench/gateways.py` reads
propagation from the times.

The board holds nothing that cannot be rebuilt: a restarted board fills again within one health-check
period. `FleetBoard` is a plain class (tested without Ray); `fleet_board_actor` wraps it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from server.scaleout.actors import detached_actor

FLEET_BOARD_ACTOR = "switchyard-fleet-board"
MAX_JOBS = 500


class FleetBoard:
    """Replica id -> its last report (a dict: `ExpertReplica.report`), with the time it arrived; the same
    for gateway ids."""

    def __init__(self, stale_after: float = 30.0, forget_after: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stale_after, self._forget_after = stale_after, forget_after
        self._clock = clock
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._gateways: dict[str, tuple[float, dict[str, Any]]] = {}
        self._jobs: dict[int, dict[str, Any]] = {}  # indexing jobs by id, as their gateway last reported

    def report(self, report: dict[str, Any]) -> None:
        self._reports[str(report["replica"])] = (self._clock(), dict(report))

    def report_gateway(self, report: dict[str, Any]) -> None:
        self._gateways[str(report["gateway"])] = (self._clock(), dict(report))

    def report_job(self, job: dict[str, Any]) -> None:
        self._jobs[int(job["id"])] = dict(job)
        while len(self._jobs) > MAX_JOBS:  # the oldest go first
            self._jobs.pop(min(self._jobs))

    def jobs(self) -> list[dict[str, Any]]:
        return [self._jobs[i] for i in sorted(self._jobs)]

    def leave(self, replica: str) -> None:
        """A replica (or gateway) that Serve stops on purpose (scale-down, redeploy) leaves at once."""
        self._reports.pop(replica, None)
        self._gateways.pop(replica, None)

    def replicas(self) -> list[dict[str, Any]]:
        """Every replica heard from recently, oldest report first; a silent one is marked unhealthy."""
        self._reports = self._recent(self._reports)
        return self._views(self._reports)

    def gateways(self) -> list[dict[str, Any]]:
        """Every gateway heard from recently, as `replicas`."""
        self._gateways = self._recent(self._gateways)
        return self._views(self._gateways)

    def _recent(self, reports: dict[str, tuple[float, dict[str, Any]]]) -> dict[str, tuple[float, dict[str, Any]]]:
        now = self._clock()
        return {r: (at, rep) for r, (at, rep) in reports.items() if now - at <= self._forget_after}

    def _views(self, reports: dict[str, tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
        now = self._clock()
        views = []
        for at, report in sorted(reports.values(), key=lambda entry: entry[0]):
            age = now - at
            view = {**report, "reported_seconds_ago": round(age, 3)}
            if age > self._stale_after:
                view["healthy"] = False
                view["problems"] = [*report.get("problems", []), f"no report for {age:.0f} s"]
            views.append(view)
        return views


def fleet_board_actor() -> Any:
    """Get or create the board: detached (it outlives whichever process built the application), on the
    head node beside the gateway and the catalogue, restarted by Ray if it dies (replicas refill it)."""
    return detached_actor(FleetBoard, FLEET_BOARD_ACTOR)
