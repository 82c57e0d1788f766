"""The HTTP API: batch jobs, an OpenAI-compatible MoA endpoint, health and metrics."""
