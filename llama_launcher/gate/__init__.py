"""The direct lane: checks each request once, then relays llama-server bytes untouched."""
