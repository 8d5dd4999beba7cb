"""The frozen snapshot the data plane reads: types, lookup tables, their pure helpers.

Imports nothing from config, control or compile: proxy/ and tls/ depend on this layer
alone (tests/test_layers.py enforces it).
"""
