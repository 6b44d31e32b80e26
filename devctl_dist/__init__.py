"""devctl-dist: YAML workflows, sequential, parallel or as a graph, here or on Celery workers."""

__version__ = "0.1.0"
