# gatewayd: `make demo` and `make test` work on a fresh machine with python3 only.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench-lookup clean bytecode

# The editable install leaves gatewayd's modules as source: without bytecode every start
# compiles all of them again (PYTHONDONTWRITEBYTECODE=1, as in the image, never keeps
# the result), ~0.6 s of a 10,000-route start-up here.  A wheel install compiles them;
# so does this step, and ``bytecode`` again before anything is started from the tree.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q gatewayd
	touch $(STAMP)

## bytecode: compile gatewayd's modules whose source changed since (what an install does)
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q gatewayd

## constraints: re-pin constraints.txt (the image's runtime dependencies) to this venv's versions
.PHONY: constraints
constraints: $(STAMP)
	$(BIN)/python tools/pin_constraints.py > constraints.txt

## demo: two echo backends and gatewayd on examples/ (Ctrl-C stops everything)
demo: $(STAMP) bytecode
	BIN=$(BIN) bash examples/demo.sh

## ensure-netns-tools: nft and ip for the node-local (TPROXY) tests; apt-get only if missing
.PHONY: ensure-netns-tools
ensure-netns-tools:
	@command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables) \
		|| echo "nftables not installed: the node-local tests will skip"
	@command -v ip >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2) \
		|| echo "iproute2 not installed: the node-local tests will skip"

## ensure-locust: locust in the virtualenv (make locust, and the compose test runs its command line)
.PHONY: ensure-locust
ensure-locust: $(STAMP)
	@test -x $(BIN)/locust || $(BIN)/pip install --quiet --disable-pip-version-check locust

## test: the whole suite (unit, real-socket and end-to-end tests)
test: $(STAMP) ensure-netns-tools ensure-locust
	$(BIN)/python -m pytest -q

## lint: ruff check (gatewayd, tests, loadtest, tools) and mypy --strict on pyproject's [tool.mypy] files
lint: $(STAMP)
	$(BIN)/ruff check gatewayd tests loadtest tools
	$(BIN)/mypy

## bench-lookup: route lookup cost at 10 and 1,000 routes
bench-lookup: $(STAMP) bytecode
	$(BIN)/python loadtest/bench_lookup.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find gatewayd -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: bench locust

## bench: wrk and h2load: gatewayd vs nginx, direct and a naive aiohttp proxy; HTTP/1.1, HTTP/2, gRPC; TCP splice vs haproxy (BENCH_ARGS="--duration 3")
bench: $(STAMP) bytecode
	command -v nginx >/dev/null || (apt-get update && apt-get install -y nginx-light || apt-get install -y nginx)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	command -v haproxy >/dev/null || (apt-get update && apt-get install -y haproxy)
	$(BIN)/python loadtest/bench.py $(BENCH_ARGS)

.PHONY: bench-scale bench-idle

## bench-scale: config-scale rows alone: start-up, reload, RSS at 10 / 1,000 / 10,000 HTTPRoutes (BENCH_ARGS="--routes 10,1000")
bench-scale: $(STAMP) bytecode
	$(BIN)/python loadtest/bench.py --only config-scale $(BENCH_ARGS)

## bench-idle: RSS of gatewayd --workers 1 holding 10,000 idle keep-alive connections
bench-idle: $(STAMP) bytecode
	command -v nginx >/dev/null || (apt-get update && apt-get install -y nginx-light || apt-get install -y nginx)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python loadtest/bench.py --only idle $(BENCH_ARGS)

## locust: locust scenarios against the demo setup (echo backends + gatewayd on examples/)
locust: $(STAMP) bytecode ensure-locust
	BIN=$(BIN) bash loadtest/run_locust.sh
