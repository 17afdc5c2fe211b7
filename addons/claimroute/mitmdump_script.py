"""The mitmdump script of an installed claimroute:
`mitmdump -s "$(claimroute addon-path)" --set claimroute=policy.yaml`.

A checkout can also use `addons/claimroute_addon.py`, which puts the package on `sys.path`.
"""

from claimroute.mitm.addon import ClaimRoute

addons = [ClaimRoute()]
