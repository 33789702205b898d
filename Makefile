# Three entry points: `make serve`, `make check` (fast: no llama-server, no browser) and `make test`
# (everything). Each installs what is missing, idempotently.
# The slow steps (building llama-server, fetching the model) are done by llama-direct itself,
# cached per user and per version, with progress on stderr.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every Python package, the test, bench and fleet extras included, pinned with its hashes: a fresh
# machine installs what CI ran, not whatever was released this morning. `make lock` moves it on purpose.
LOCK := requirements.lock
PIP := $(BIN)/python -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
FRONT_STAMP := frontend/node_modules/.installed
STATIC := broker/static/index.html
ARGS ?=

.PHONY: serve example check check-python check-frontend test install lock frontend dist browser fleet-tools tools

serve: install frontend
	$(BIN)/llama-direct serve $(ARGS)

# The example host app (examples/fastapi-app/): its page bundled with the browser client, then the app,
# which starts its lane and prints `example ready: URL`. EXAMPLE_USERS=name:password,...; EXAMPLE_PORT
# (0: a free one); EXAMPLE_DATA_DIR (default examples/fastapi-app/.data).
EXAMPLE_JS := examples/fastapi-app/static/app.js
example: install $(EXAMPLE_JS)
	$(BIN)/python examples/fastapi-app/app.py

$(EXAMPLE_JS): $(FRONT_STAMP) examples/fastapi-app/page/main.ts $(shell find frontend/src -maxdepth 1 -type f 2>/dev/null)
	frontend/node_modules/.bin/esbuild examples/fastapi-app/page/main.ts --bundle --format=esm --minify \
		--target=es2022 --log-level=warning --outfile=$@

# Lint, types, the unit and hostile tests that need no llama-server, and the page's unit tests
# (pytest and vitest side by side: each uses one core).
check: install $(FRONT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(MAKE) --no-print-directory -j2 check-python check-frontend

# The property-based tests draw a tenth of their examples here, and the two that wait out Redis's own
# clock (21 s of sleep) are left out; `make test` (and CI) runs everything, whole.
check-python:
	LLAMA_DIRECT_FUZZ=quick $(BIN)/pytest -q -m "not real and not browser and not slow" tests/unit tests/hostile

check-frontend:
	cd frontend && npm test

test: install frontend browser fleet-tools
	$(BIN)/llama-direct setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest
	cd frontend && npm test
	cd frontend && npm run e2e

install: $(STAMP)

$(BIN)/python:
	@echo "llama-direct: creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)

# The lock first, hashes checked (pip refuses a lock that misses a dependency), then the project itself
# with no dependencies of its own and the locked build backend, so nothing unpinned enters the venv.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	@echo "llama-direct: installing the locked Python packages into $(VENV)"
	@$(PIP) install --quiet --require-hashes -r $(LOCK)
	@$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@# A checkout installed before the build backend was hatchling has setuptools' egg-info at the top,
	@# which shadows the install's entry points for code run from here (`llama-direct bench` not found).
	@rm -rf llama_direct.egg-info
	@touch $@

# Today's releases of everything, within pyproject.toml's ranges; then `make check` (or `make test`)
# installs from the new lock and tries it. uv resolves for every platform and Python 3.11+ at once.
lock: | $(BIN)/python
	@test -x $(BIN)/uv || { echo "llama-direct: installing uv, which resolves the lock"; $(PIP) install --quiet uv; }
	@echo "llama-direct: resolving the newest releases into $(LOCK)"
	@printf 'hatchling>=1.27\n' | $(BIN)/uv pip compile pyproject.toml - --extra test --extra bench --extra fleet \
		--universal --python-version 3.11 --generate-hashes --upgrade --quiet \
		--custom-compile-command 'make lock' -o $(LOCK)

frontend: $(STATIC)

# No install scripts: the one package that has one (esbuild's binary check) works without it, and
# npm 11 would otherwise print a warning about each script it holds back.
$(FRONT_STAMP): frontend/package.json frontend/package-lock.json | tools
	@echo "llama-direct: installing the frontend's npm packages"
	cd frontend && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

$(STATIC): $(FRONT_STAMP) $(shell find frontend/src -type f 2>/dev/null)
	@echo "llama-direct: building the frontend into broker/static/"
	cd frontend && npm run build

# The release files in dist/: the wheel and the sdist, each with the built page (broker/static/), built
# offline by the venv's locked hatchling; and the browser client's npm tarball (its prepack step
# compiles frontend/dist/ with tsc).
dist: install frontend
	rm -rf dist
	$(BIN)/hatchling build -d dist -t wheel -t sdist
	cd frontend && npm pack --loglevel=error --pack-destination ../dist
	@ls -l dist

# Debian's redis-server and haproxy for the fleet tests. The packages' services are not started here:
# each test starts its own on a private loopback port and stops it.
fleet-tools:
	@test -x /usr/bin/redis-server -a -x /usr/sbin/haproxy || { \
		echo "llama-direct: installing Debian's redis-server and haproxy"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server haproxy; }

# Debian's Chromium for the browser tests; never a downloaded browser.
browser:
	@test -x /usr/bin/chromium || { echo "llama-direct: installing Debian's chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Node 20 and npm build the frontend. Debian's own nodejs is older, so say what to get instead of
# installing the wrong one. (cmake and a C++ compiler are checked by llama-direct itself.)
tools:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		echo "llama-direct: Node.js 20 and npm are needed to build the frontend: install them (https://nodejs.org)"; exit 1; }
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { \
		echo "llama-direct: Node.js 20 or newer is needed, found $$(node --version)"; exit 1; }
