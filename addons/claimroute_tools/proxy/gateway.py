"""The `gateway` profile: a mitmproxy master with only what a JWT gateway needs.

`python -m claimroute_tools.proxy.gateway --set claimroute=POLICY [mitmdump options]`
(`claimroute proxy --profile gateway POLICY ...`).

mitmproxy hands every event of every request (requestheaders, request, responseheaders,
response, and an `update` after each) to every addon of its chain, whether or not the addon has
a hook for it; mitmdump's chain has 35 addons. Measured with `claimroute_bench.hookcost` on a
loaded mitmdump with claimroute (see docs/scaling.md): about 1.2-1.3 ms per request went to
event dispatch, of which only ~0.3 ms ran inside hooks (claimroute's own 0.11-0.15 ms included);
a third went to `update` events nobody listens to, and the rest was mitmproxy asking addons
that do nothing for this traffic (onboarding, map local/remote, modify headers/body, anticache,
save, HAR, playback, sticky cookies/auth, the flow display...).

Kept, in mitmdump's order (so that hooks run in the same order and the upstream gets the same
bytes): Core (option checks), Block (block_global/block_private), DisableH2C (h2c upgrade
smuggling), ProxyAuth, Proxyserver (with mitmproxy's request validation,
`validate_inbound_headers`), the `-s` scripts with the claimroute addon among them, NextLayer,
TlsConfig, UpstreamAuth, UpdateAltSvc (keeps reverse-proxy clients from being told to bypass the
proxy), the terminal log and ErrorCheck (an error logged at startup exits 1 with the message).
ProxyAuth and UpstreamAuth stay in the chain even while their option is unset, so that setting it
later (a script, once running) is enforced as in mitmdump; unset, each costs well under a
microsecond per event. The addon runs where mitmdump runs it among the scripts: at the position of
its `-s` (`-s ADDON` as mitmdump and the lab pass it), first when none is given (where
`claimroute proxy` puts it for mitmdump). It is registered after the `-s` scripts have loaded and
then configured with every option, as mitmdump's script loader does, so it sees (and refuses)
options set before it existed.
mitmproxy's `update` event is not sent when no addon listens for it (`GatewayAddons`).
Left out: the flow display (dumper), interactive and replay features (console commands, cut,
export, client/server playback, reading flow files, keepserving), traffic rewriting (anticache,
anticomp, map local/remote, modify headers/body, sticky cookie/auth, block_list), saving flows
(save, HAR), the onboarding app (mitm.it), the browser launcher and DNS mode's resolver. Setting
an option of a left-out addon, or a mode that needs one (dns, wireguard), is a startup error
rather than silently ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import addonmanager, ctx, exceptions, hooks, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyauth,
    proxyserver,
    script,
    termlog,
    tlsconfig,
    update_alt_svc,
    upstream_auth,
)
from mitmproxy.proxy import mode_specs
from mitmproxy.tools import cmdline
from mitmproxy.tools import main as mitm_main

import claimroute
from claimroute.mitm.addon import ClaimRoute

log = logging.getLogger("claimroute")

# The addon's own mitmdump entry scripts: the gateway has the addon built in, so a `-s` naming
# one of these (the lab and `claimroute addon-path` users pass it) is the same addon, not a second.
_ADDON_SCRIPTS = frozenset({
    (Path(claimroute.__file__).resolve().parent / "mitmdump_script.py"),
    (Path(claimroute.__file__).resolve().parent.parent / "claimroute_addon.py"),
})  # fmt: skip
# Options only a left-out addon reads, which a harness passes to every mitmdump: ignored.
_DISPLAY_ONLY = frozenset({"flow_detail", "dumper_filter", "dumper_default_contentview"})
# Modes whose traffic a left-out addon serves: DNS mode and WireGuard's in-tunnel DNS (10.0.0.53)
# are answered by mitmproxy's DNS resolver; without it every query gets SERVFAIL.
_UNSERVED_MODES = {
    mode_specs.DnsMode: "dns (its DNS resolver is left out)",
    mode_specs.WireGuardMode: "wireguard (its in-tunnel DNS resolver is left out)",
}

LEFT_OUT = (
    "the flow display (dumper, flow_detail), interactive and replay features (commands, cut, "
    "export, client/server playback, reading flow files, keepserving), traffic rewriting "
    "(anticache, anticomp, map_local/map_remote, modify_headers/modify_body, stickycookie, "
    "stickyauth, block_list), saving flows (save_stream_file, HAR), the onboarding app "
    "(mitm.it), the browser launcher and DNS mode"
)


def _is_addon_script(spec: str) -> bool:
    path = spec.split(" ", 1)[0]  # a script spec may carry arguments after its path
    try:
        return Path(path).resolve() in _ADDON_SCRIPTS
    except OSError:
        return False


class GatewayScriptLoader(script.ScriptLoader):
    """mitmproxy's script loader with the claimroute addon built in among the `-s` scripts.

    A `scripts` entry naming the addon's own entry script is not loaded as a script: the
    built-in addon takes its place, so it runs where mitmdump would run it (first when no entry
    names it, as `claimroute proxy` puts it first for mitmdump). Events reach the scripts and
    the addon in `.addons` order, as they reach mitmdump's scripts.
    """

    name = "scriptloader"  # what mitmproxy and scripts look it up by

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[script.Script] = []  # the user's scripts, in order
        self.builtin: object | None = None  # the claimroute addon, once registered
        self._position = 0  # how many user scripts run before the addon

    def attach(self, addon: object) -> None:
        """Put the (registered) built-in addon at its position among the scripts."""
        self.builtin = addon
        self._arrange()

    def _arrange(self) -> None:
        extra = [] if self.builtin is None else [self.builtin]
        self.addons = [*self.scripts[: self._position], *extra, *self.scripts[self._position :]]

    def configure(self, updated: set[str]) -> None:
        """mitmproxy's `ScriptLoader.configure`, skipping (and placing) the addon's entry."""
        if "scripts" not in updated:
            return
        specs = list(ctx.options.scripts)
        for spec in specs:
            if specs.count(spec) > 1:
                raise exceptions.OptionsError("Duplicate script")
        own = [i for i, spec in enumerate(specs) if _is_addon_script(spec)]
        wanted = [spec for spec in specs if not _is_addon_script(spec)]
        self._position = sum(1 for spec in specs[: own[0]] if spec in wanted) if own else 0
        for old in self.scripts[:]:
            if old.path not in wanted:
                log.info("Un-loading script: %s", old.path)
                ctx.master.addons.remove(old)
                self.scripts.remove(old)
        current = {s.path: s for s in self.scripts}
        new = [script.Script(spec, True) for spec in wanted if spec not in current]
        fresh = {s.path: s for s in new}
        self.scripts = [current.get(spec) or fresh[spec] for spec in wanted]
        self._arrange()
        for loaded in new:
            ctx.master.addons.register(loaded)
            if self.is_running:  # as mitmproxy: a script added once running is told so
                ctx.master.addons.invoke_addon_sync(loaded, hooks.RunningHook())


class GatewayAddons(addonmanager.AddonManager):
    """mitmproxy's addon manager, minus the `update` event when no addon listens for it.

    After every flow event mitmproxy sends an `update` event (for flow views: console, web);
    in mitmdump nothing listens, and asking every addon about it took a third of the event
    dispatch time per request. Whether any addon (a script's included) has an `update` hook is
    worked out again whenever an addon is registered or removed (scripts reload that way).
    """

    def __init__(self, master: master.Master) -> None:
        super().__init__(master)
        self._listens: bool | None = None  # None: to be worked out

    def register(self, addon: object) -> object:
        self._listens = None
        return super().register(addon)

    def remove(self, addon: object) -> None:
        self._listens = None
        super().remove(addon)

    def _anyone_listens(self) -> bool:
        if self._listens is None:
            self._listens = any(
                callable(getattr(a, "update", None)) for a in addonmanager.traverse(self.chain)
            )
        return self._listens

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        if self._anyone_listens():
            await super().handle_lifecycle(event)
        else:
            await self.trigger_event(event)


class GatewayMaster(master.Master):
    """mitmproxy's master with the gateway's addons (see the module docstring)."""

    def __init__(self, opts: options.Options, event_loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(opts, event_loop=event_loop, with_termlog=False)
        self.addons = GatewayAddons(self)  # before any addon is added
        self._termlog_addon = termlog.TermLog()  # what Master does with with_termlog=True
        self.addons.add(self._termlog_addon)
        self.addons.add(
            core.Core(),
            block.Block(),
            disable_h2c.DisableH2C(),
            proxyauth.ProxyAuth(),
            proxyserver.Proxyserver(),
            GatewayScriptLoader(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            upstream_auth.UpstreamAuth(),
            update_alt_svc.UpdateAltSvc(),
            errorcheck.ErrorCheck(),
        )

    def _refuse_unserved_modes(self) -> None:
        for spec in self.options.mode:
            try:
                mode = mode_specs.ProxyMode.parse(spec)
            except ValueError:
                continue  # Proxyserver reports an invalid mode itself
            for kind, why in _UNSERVED_MODES.items():
                if isinstance(mode, kind):
                    log.error(
                        "claimroute gateway: mode %s is not served by the gateway profile: %s; "
                        "use `claimroute proxy` without --profile gateway",
                        spec, why,
                    )  # fmt: skip

    def _refuse_unknown_options(self) -> None:
        unknown = sorted(set(self.options.deferred) - _DISPLAY_ONLY)
        if unknown:
            log.error(
                "claimroute gateway: option(s) %s not available in the gateway profile (their "
                "addons are left out: %s); use `claimroute proxy` without --profile gateway",
                ", ".join(unknown), LEFT_OUT,
            )  # fmt: skip

    def _add_claimroute(self) -> None:
        """Register the addon after the `-s` scripts have loaded (a script may patch what the
        addon uses before its policy loads) and put it at its position among them."""
        addon = ClaimRoute()
        loader = self.addons.get("scriptloader")
        try:
            # Registered outside the chain, as mitmproxy registers a script's addon: the
            # deferred claimroute* values are set, but no configure event reaches it yet...
            self.addons.register(addon)
            loader.attach(addon)
            # ...then one configure with every option, as the script loader does: the addon
            # sees (and refuses) options set before it existed (validate_inbound_headers=false,
            # allow_hosts, ignore_hosts) and reads the others (stream_large_bodies).
            self.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(self.options.keys())))
        except exceptions.OptionsError as exc:
            log.error("%s", exc)  # ErrorCheck exits 1 with this message before serving
            for name in set(self.options.deferred) & set(self.options.keys()):
                del self.options.deferred[name]  # known now, only refused: not "unknown"

    async def _await_scripts(self) -> None:
        """Let mitmproxy load the `-s` scripts first: it does so from a task per script, on
        the loop's first turns (a script that fails to load stays unloaded: bounded)."""
        loader = self.addons.get("scriptloader")
        for _ in range(50):
            if all(s.ns is not None for s in loader.scripts):
                return
            await asyncio.sleep(0)

    async def run(self) -> None:
        await self._await_scripts()
        self._add_claimroute()
        self._refuse_unknown_options()  # logged as an error: ErrorCheck exits 1 before serving
        self._refuse_unserved_modes()
        await super().run()


def make_parser(opts: options.Options) -> argparse.ArgumentParser:
    """mitmdump's command line, limited to the options of the gateway's addons."""
    parser = argparse.ArgumentParser(
        prog="claimroute proxy --profile gateway",
        usage="%(prog)s POLICY [options]  (or python -m claimroute_tools.proxy.gateway "
        "--set claimroute=POLICY [options])",
        description="mitmproxy with only the addons a JWT gateway needs and the claimroute "
        f"addon. Left out: {LEFT_OUT}.",
    )
    cmdline.common_options(parser, opts)  # flags of left-out addons' options are absent
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGINT/SIGTERM; exits 1 (with the message) on a startup error."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    mitm_main.run(GatewayMaster, make_parser, arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
