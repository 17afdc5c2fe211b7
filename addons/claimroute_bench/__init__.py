"""Benchmarks: `python -m claimroute_bench` (`just bench`).

Four measurements, each its own module:

- `proxy_load`: bare mitmdump against mitmdump + claimroute with a realistic policy, alternated
  in rounds, driven by a load generator in separate processes (`loadgen`) whose own capacity is
  measured against the bare upstream first.
- `micro`: the decision path per token, cold (first sight) and warm (cache hit), beside the raw
  `cryptography` verify of the same token.
- `memory`: 100,000 distinct tokens through `decide` with the cache; RSS and cache size.
- `stalls`: the longest event-loop block inside mitmdump (`loopmon.py`) during policy reloads
  and JWKS refreshes under load.

Results go to a rich table and a JSON file (default `reports/bench-results.json`).
"""
