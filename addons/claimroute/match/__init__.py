"""Matching: claim paths, the matcher engine, the request view and its conditions."""
