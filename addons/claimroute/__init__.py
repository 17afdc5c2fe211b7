"""claimroute: JWT verification, claim RBAC and claim routing for mitmproxy."""
