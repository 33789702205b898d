"""The contract between the broker, the gate and their clients; holds no key.

Everything two of the processes (or a process and a browser) must agree on is spelt here once:
the lane's routes and scopes (`lanes`), the grant and the token codec (`tokens`), the public key
set (`keys`), the replay store (`replay`), the refusal catalogue (`refusals`), the runtime names
(`runtime`), the ids file (`ids`) and the log redaction both sides install (`redaction`). `sdk` is
what a Python client imports to call the lane.

This package imports nothing else of the project, and no module in it reads, makes or writes a
private key: the broker's signing keys stay in `broker.signing_keys`, llama-server's master key in
`llama_launcher`.
"""
