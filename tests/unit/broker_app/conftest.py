"""The broker app's fixtures for the test files here: `make` and `h` build the app (`broker_harness`),
and `_lane_on` gives each a page to serve."""

from broker_harness import _lane_on, h, make  # noqa: F401  (the fixtures, registered for this folder)
