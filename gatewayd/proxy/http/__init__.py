"""HTTP codecs and the protocol-neutral exchange (see codec.py)."""
