"""The Serve application object for a serve config: replica resources (a GPU per replica where the cluster has
GPUs), request limits, autoscaling and back-pressure from the deployment settings (`DeploymentSpec`, the one
definition; limits left unset follow the planned slots, `sizing`). `build_app` is what a Serve config's
`import_path` names (`actors.serving.app:build_app`, re-exported there)."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from .config import DeploymentSpec, ServeConfig
from .server import TTSServer
from .sizing import request_limits

log = logging.getLogger(__name__)


def build_app(args: dict[str, Any], deployment: DeploymentSpec | None = None) -> serve.Application:
    """The Serve application for `args` (a ServeConfig mapping) deployed as `deployment` says (default: its
    defaults, with request limits from the planned slots)."""
    config = ServeConfig.model_validate(args)
    spec = deployment or DeploymentSpec()
    num_gpus = spec.num_gpus
    if num_gpus is None:
        num_gpus = 0.0 if config.engine.device == "cpu" else (1.0 if _cluster_has_gpus() else 0.0)
    limits = request_limits(config, spec, num_gpus)
    log.info(
        "Serve deployment %s: up to %d requests per replica, %d queued, a replica added at %.0f in flight (%d slots "
        "planned: %s)", spec.name, limits.max_ongoing_requests, limits.max_queued_requests,
        limits.target_ongoing_requests, limits.slots, limits.why,
    )  # fmt: skip
    options: dict[str, Any] = dict(
        name=spec.name,
        max_ongoing_requests=limits.max_ongoing_requests,
        max_queued_requests=limits.max_queued_requests,
        health_check_period_s=spec.health_check_period_s,
        health_check_timeout_s=spec.health_check_timeout_s,
        graceful_shutdown_timeout_s=spec.graceful_shutdown_timeout_s,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.limits.retry_after_s),
    )
    if spec.num_replicas is not None:
        options.update(num_replicas=spec.num_replicas, autoscaling_config=None)
    else:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target_ongoing_requests=limits.target_ongoing_requests,
            upscale_delay_s=spec.upscale_delay_s,
            downscale_delay_s=spec.downscale_delay_s,
        )
    actor_options = {"num_gpus": num_gpus, "num_cpus": spec.num_cpus}
    return TTSServer.options(ray_actor_options=actor_options, **options).bind(config.model_dump())


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
