"""mitmdump entry point: `mitmdump -s addons/claimroute_addon.py --set claimroute=policy.yaml`."""

import sys
from pathlib import Path

# mitmproxy puts this file's folder on sys.path only while importing it; keep the package
# importable for later imports (reloads, lazily imported modules).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from claimroute.mitm.addon import ClaimRoute  # noqa: E402

addons = [ClaimRoute()]
