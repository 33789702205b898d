"""Owns llama-server and its master key; the gate lives here."""
