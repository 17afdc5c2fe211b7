"""Traffic engines other than the built-in aiohttp one (`traffic.drive`).

`locust_engine.drive_locust` has `drive`'s signature and result; `locustfile.py` is the file
Locust itself loads (it is never imported by the runner: gevent would monkeypatch it).
"""
