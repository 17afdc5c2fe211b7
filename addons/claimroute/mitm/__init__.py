"""The mitmproxy layer: the addon, request hygiene, applying decisions, refusals, reload. The only
place that imports mitmproxy.
"""
