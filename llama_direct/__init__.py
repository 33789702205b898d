"""What clients of llama-direct import; holds no key (the broker and the gate live elsewhere)."""
