"""`raytts serve`: start (or join) Ray, start Serve on HOST:PORT and run the raytts application until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading

from actors.cluster import joined_ray
from actors.serving.config import LOOPBACK_HOSTS, ServerConfig

log = logging.getLogger(__name__)


def run_server(config: ServerConfig, address: str | None = None) -> int:
    from ray import serve

    from actors.serving.app import build_app

    if config.host not in LOOPBACK_HOSTS and not config.app.auth.keys():
        raise ValueError(
            f"binding to {config.host} needs API keys: set {config.app.auth.api_keys_env}=KEY[,KEY...] or "
            f"app.auth.api_keys, or bind to 127.0.0.1"
        )
    with joined_ray(address, local_cpus=4):
        # After ray.init: Ray's driver installs a failure handler for SIGTERM that would kill us uncleanly.
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        serve.start(http_options={"host": config.host, "port": config.port})
        app = build_app(config.app.model_dump(), deployment=config.deployment)
        serve.run(app, name="raytts", route_prefix="/")
        print(
            f"raytts serving on http://{config.host}:{config.port}  (POST /v1/audio/speech, POST /v1/tts)", flush=True
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        serve.shutdown()
        return 0
