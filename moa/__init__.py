"""moa-batch: Mixture-of-Agents as a distributed batch pipeline.

This package holds the CLI, the settings and the embedded services."""

__version__ = "0.1.0"
