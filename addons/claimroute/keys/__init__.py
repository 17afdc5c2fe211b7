"""Keys: key sets, the key-source protocol, local and remote (JWKS) sources."""
