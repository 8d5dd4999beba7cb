"""Stage 1, config: manifests (from any source) -> typed, validated ``model`` objects.

Imports nothing from the later stages (control, compile).
"""
