"""Entry points: the `raytts` command line and example inputs."""
