"""Wiring that runs gatewayd: config sources, status sinks, Kubernetes client."""
