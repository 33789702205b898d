"""`python -m broker`: the parent process starts the broker this way."""

from broker.server import main

main()
