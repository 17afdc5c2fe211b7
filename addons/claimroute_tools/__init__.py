"""claimroute's tooling: the `claimroute` command, the scenario runner and the lab it runs in.

Nothing here runs inside mitmproxy; the addon itself is the `claimroute` package.
"""
