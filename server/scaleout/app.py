"""Switchyard on Ray Serve: how the parts fit, and how to start them.

    client ──HTTP──▶ Serve proxy (every node) ──▶ Gateway × gateway_replicas (head node): the one-machine
                        app (`create_app`): routing, registry, retrieval, admin, metrics, console
                        │  each follows ──▶ registry store actor (the manifest, one writer) + sessions actor
                        │  ReplicaBackend: handle.options(multiplexed_model_id=<adapter key>)
                        ▼
                     ExpertReplica (M replicas, fixed or autoscaled: the configured engine + LRU of
                        │            adapters) ──reports──▶ fleet board actor: GET /admin/fleet
                        ▲  adapter bytes, fetched lazily on first use
                        │
                     catalogue actor (detached, head node, persisted): adapter files by key

`build_app` is a Ray Serve application builder, so `serve run server.scaleout.app:build_app config=...` and
a `serve deploy` config file (deploy/ray/serve.yaml) both work; `switchyard serve --ray` starts a local
cluster (or joins one with --ray-address) and runs it.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import ProxyLocation

from server.scaleout.catalogue import catalogue_actor
from server.scaleout.fleet_board import fleet_board_actor
from server.scaleout.gateway import gateway_deployment
from server.scaleout.registry_store import registry_store_actor
from server.scaleout.replica import ExpertReplica
from server.scaleout.shared_sessions import sessions_actor
from server.settings import Settings, config_file_from

log = logging.getLogger(__name__)
APP_NAME = "switchyard"


def build_app(args: dict[str, Any]) -> Any:
    """Application builder. `args`: `config` (a settings file; else SWITCHYARD_CONFIG), `settings` (grouped
    settings over the file and the environment: a RayService can carry them inline, and `serve --ray` passes
    the ones it loaded) and `expert_replicas`. Settings load as in every other mode (`Settings.load`)."""
    config, overrides = args.get("config"), dict(args.get("settings") or {})
    if "ingress_replicas" in args:  # the previous release's argument, for one release
        log.warning("the application argument `ingress_replicas` is deprecated: use the setting "
                    "`scale_out.gateway_replicas`")
        overrides["scale_out"] = {**overrides.get("scale_out", {}), "gateway_replicas": int(args["ingress_replicas"])}
    if args.get("expert_replicas"):
        overrides["scale_out"] = {**overrides.get("scale_out", {}), "expert_replicas": int(args["expert_replicas"])}
    settings = Settings.load(config_file_from(Path(config) if config else None), **overrides)
    data_dir = settings.server.data_dir.resolve()
    catalogue_actor(data_dir / "cluster-catalogue")
    registry_store_actor(data_dir / "manifest.sqlite3")
    sessions_actor(settings.routing.session_max_entries, settings.routing.session_ttl_seconds)
    fleet_board_actor()
    plain = settings.transport()
    replicas = serve.deployment(**expert_replica_options(settings))(ExpertReplica).bind(plain)
    return gateway_deployment(settings).bind(replicas, plain)


def expert_replica_options(settings: Settings) -> dict[str, Any]:
    """The expert replicas' deployment: a fixed count, or Serve's autoscaling between the bounds on ongoing
    generations per replica. A replica Serve removes stops taking requests and gets `replica_drain_seconds`
    to finish the ones it runs (scale-down fails none); Serve's health checks replace a broken engine."""
    scale = settings.scale_out
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": settings.limits.max_active_requests,
        "max_queued_requests": settings.limits.max_queued_requests,
        "graceful_shutdown_timeout_s": scale.replica_drain_seconds, "health_check_period_s": 5,
    }
    if not scale.autoscaling:
        return {**options, "num_replicas": scale.expert_replicas}
    return {**options, "num_replicas": "auto", "autoscaling_config": {
        "min_replicas": scale.min_expert_replicas, "initial_replicas": scale.expert_replicas,
        "max_replicas": scale.max_expert_replicas, "target_ongoing_requests": scale.target_ongoing_requests,
        "upscale_delay_s": scale.upscale_delay_seconds, "downscale_delay_s": scale.downscale_delay_seconds,
    }}


def run(settings: Settings) -> int:
    """Start (or join) a Ray cluster, run the application on the settings' host and port until
    SIGTERM/SIGINT."""
    address, host, port = settings.scale_out.ray_address, settings.server.host, settings.server.port
    if address:
        ray.init(address=address, namespace="switchyard")
    else:
        ray.init(include_dashboard=False, namespace="switchyard", object_store_memory=256 * 1024 * 1024)
    # One address, the head's (as one machine's server has one): `serve deploy deploy/ray/serve.yaml` puts
    # a proxy on every node instead. Nodes that share a machine could not all bind the same port anyway.
    serve.start(proxy_location=ProxyLocation.HeadOnly, http_options={"host": host, "port": port})
    application = build_app({"settings": settings.transport()})
    serve.run(application, name=APP_NAME, route_prefix="/")
    log.info("switchyard on Ray Serve: http://%s:%d (%s expert replicas)", host, port,
             "autoscaled" if settings.scale_out.autoscaling else settings.scale_out.expert_replicas)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0
