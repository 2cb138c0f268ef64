"""The Serve application object for a serve config: replica resources (a GPU per replica where the cluster has
GPUs), autoscaling and back-pressure from the deployment settings. `build_app` is what a Serve config's
`import_path` names (`actors.serving.app:build_app`, re-exported there)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from .config import DeploymentSpec, ServeConfig


def build_app(args: dict[str, Any], deployment: DeploymentSpec | None = None) -> serve.Application:
    """The Serve application for `args` (a ServeConfig mapping); `deployment` overrides the replica options."""
    config = ServeConfig.model_validate(args)
    options: dict[str, Any] = {}
    num_gpus = None if deployment is None else deployment.num_gpus
    if num_gpus is None:
        num_gpus = 0.0 if config.engine.device == "cpu" else (1.0 if _cluster_has_gpus() else 0.0)
    actor_options: dict[str, Any] = {"num_gpus": num_gpus}
    if deployment is not None:
        actor_options["num_cpus"] = deployment.num_cpus
        options.update(
            name=deployment.name,
            max_ongoing_requests=deployment.max_ongoing_requests,
            max_queued_requests=deployment.max_queued_requests,
            health_check_period_s=deployment.health_check_period_s,
            health_check_timeout_s=deployment.health_check_timeout_s,
        )
        if deployment.num_replicas is not None:
            options.update(num_replicas=deployment.num_replicas, autoscaling_config=None)
        else:
            options["autoscaling_config"] = AutoscalingConfig(
                min_replicas=deployment.min_replicas,
                max_replicas=deployment.max_replicas,
                target_ongoing_requests=deployment.target_ongoing_requests,
                upscale_delay_s=30,
                downscale_delay_s=300,
            )
    options["backpressure_config"] = BackpressureConfig(status_code=503, retry_after_s=config.limits.retry_after_s)
    from .app import TTSServer

    return TTSServer.options(ray_actor_options=actor_options, **options).bind(config.model_dump())


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
