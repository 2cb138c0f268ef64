"""The Ray Serve application raytts deploys: `build_app(args)` is the import path a Serve config names
(`actors.serving.app:build_app`); the deployment class is `server.TTSServer`."""

from .deployment import build_app
from .server import TTSServer

__all__ = ["TTSServer", "build_app"]
