"""Running the proxy: the lean `gateway` profile and several workers behind HAProxy."""
