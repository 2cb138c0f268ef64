"""The online service: Ray Serve deployment (app.py), HTTP bodies and audio encodings (api.py), config (config.py)."""
