# claimroute: every routine action is a recipe here. Run them as `uv run just <recipe>`.

set shell := ["bash", "-uc"]

# List the recipes.
default:
    @just --list

# Run the whole test suite (unit, addon and end-to-end through a real mitmdump).
test *ARGS:
    uv run pytest {{ARGS}}

# Only the fast tests (no mitmdump subprocess).
test-fast *ARGS:
    uv run pytest -m "not e2e" {{ARGS}}

# Lint and check formatting.
lint:
    uv run ruff check addons tests scenarios
    uv run ruff format --check addons tests scenarios

# Format the code and apply safe lint fixes.
fmt:
    uv run ruff check --fix addons tests scenarios
    uv run ruff format addons tests scenarios

# Run the proxy: mitmdump with the addon on POLICY (mitmdump options may follow).
proxy POLICY *ARGS:
    uv run claimroute proxy {{POLICY}} {{ARGS}}

# Validate a policy and print its summary.
check POLICY:
    uv run claimroute check {{POLICY}}

# Run a scenario by name (scenarios/NAME.yaml) or path, and write its report.
scenario NAME *ARGS:
    uv run claimroute scenario {{NAME}} {{ARGS}}

# The flagship experiment: employees + a sticky 10% canary, end to end, with a report.
demo:
    uv run claimroute scenario employees-and-sticky-canary

# Benchmarks: the addon against bare mitmdump, and the decision path per token.
bench *ARGS:
    uv run python -m claimroute_bench {{ARGS}}

# Build the wheel, install it alone into a throwaway virtualenv and use it from another folder.
wheel-check:
    .ci/wheel-check
