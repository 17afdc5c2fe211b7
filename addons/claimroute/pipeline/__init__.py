"""The request path, stage by stage: extract, verify, identity, authorize and route (decide), with
the verified-token cache.
"""
