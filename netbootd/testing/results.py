"""What a lab boot tells its caller: booted or not, seconds to each stage, the console, the
timeline netbootd recorded for the machine, and where it stopped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from netbootd.core.timeline import fetched, missing

# "the kernel has started the initramfs' init" (info messages: a `quiet` command line hides them)
DEFAULT_EXPECT = r"Run /init as init process|Freeing unused kernel (image )?(\(initmem\) )?memory"
PANIC = re.compile(r"Kernel panic - not syncing.*")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")  # a console's escapes and carriage returns


def tail(text: str, lines: int = 40) -> str:
    """The last `lines` non-blank lines of a console or log, escapes stripped (for failure reports)."""
    text = ANSI.sub("", text)
    rows = [r for r in text.splitlines() if r.strip()]
    cut = rows[-lines:]
    return ("[...]\n" if len(rows) > lines else "") + "\n".join(cut)


def stage_names(events: list[dict[str, Any]]) -> list[str]:
    """A name per timeline event, as an operator reads a boot: dhcp, tftp, loader (an EFI binary
    over HTTP before any script: UEFI HTTP boot), script, kernel, initrd, initrd2, squashfs,
    preseed.cfg, ..., ignition, beacon. A download is named by what netbootd knew it to be (its
    role in the machine's plan, or the file its command line names); one it did not know is
    named by position: after the script the kernel first, then the initrds, in the order the
    generated scripts fetch them. A file that was not there is `missing:<name>`."""
    names = []
    after_script = initrds = 0
    seen_script = False
    for e in events:
        stage = e.get("stage", "")
        name = fetched(e)
        if stage == "script":
            seen_script, after_script, initrds = True, 0, 0
            names.append("script")
        elif missing(e):
            names.append("missing:" + (name or str(e.get("path", "")).rsplit("/", 1)[-1]))
        elif stage == "http" and name:
            after_script += seen_script
            if name == "initrd":
                initrds += 1
                name = "initrd" if initrds == 1 else f"initrd{initrds}"
            names.append(name)
        elif stage == "http":
            if not seen_script:
                names.append("loader")
            else:
                after_script += 1
                names.append("kernel" if after_script == 1 else ("initrd" if after_script == 2 else f"initrd{after_script - 1}"))
        elif stage == "tftp":
            names.append(_tftp_stage(e))
        elif stage == "beacon":
            names.append(f"beacon:{e.get('beacon', '')}" if e.get("beacon") not in (None, "loaded") else "beacon")
        else:
            names.append(stage)
    return names


def _tftp_stage(event: dict[str, Any]) -> str:
    """TFTP steps by what they carry: the GRUB chain's files have names of their own."""
    base = str(event.get("file", "")).rsplit("/", 1)[-1].lower()
    if event.get("optional") or event.get("probe"):
        return "tftp"
    if base.startswith("shim") and base.endswith(".efi"):
        return "shim"
    if base.startswith("grub") and base.endswith(".efi"):
        return "grub"
    if base.endswith(".cfg"):
        return "grub.cfg"
    if base == "kernel" or base.startswith("initrd") or base == "image.efi":
        return {"kernel": "kernel", "image.efi": "efi"}.get(base, "initrd")
    return "tftp"


def describe(event: dict[str, Any]) -> str:
    """One line for an event: what happened, without the bookkeeping fields."""
    skip = {"time", "stage", "ip"}
    return " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)


@attrs.frozen
class PowerOn:
    """One power-on of a machine's run (netbootd.testing.poweron tells them apart)."""

    number: int  # 1, 2, ...
    started: float  # wall time: QEMU's start, when the console showed the firmware, or the DHCP request
    how: str  # what showed it: "QEMU started", "console: SeaBIOS (version ...)", "timeline: ..."
    console: str  # its console, escapes removed ("" when the console did not show where it began)
    events: tuple[dict[str, Any], ...]  # netbootd's events of this power-on
    path: tuple[str, ...]  # network, dhcp, script, kernel, ..., disk, reboot
    offset: int | None = None  # where its console begins in the raw console (None: not shown)

    def describe(self) -> str:
        return f"power-on {self.number}: " + " → ".join(self.path)


@attrs.frozen
class BootResult:
    mac: str
    firmware: str
    booted: bool
    seconds: float  # power-on to the decision (match, failure, timeout)
    reason: str  # "booted", or why not
    stages: dict[str, float]  # stage name → seconds from power-on to its first event
    console: str  # the serial console, escape sequences removed
    timeline: list[dict[str, Any]]  # netbootd's events for this machine
    netbootd_log: list[str]  # netbootd's log lines that name this machine
    match: str = ""  # the console text that matched `expect`
    timed_out: bool = False  # nothing decided within the timeout (QEMU was killed)
    # each power-on (one, unless the machine followed its reboots) with its path (netbootd.testing.poweron)
    power_ons: tuple[PowerOn, ...] = ()
    disk: Path | None = None  # the machine's disk image (it persists across its power-ons)

    def paths(self) -> list[str]:
        """One line per power-on: `power-on 1: network → dhcp → script → kernel → ... → reboot`."""
        return [power_on.describe() for power_on in self.power_ons]

    def stopped_at(self) -> str:
        """The last stage netbootd saw, for "where the boot stopped"."""
        if not self.timeline:
            return "netbootd saw nothing of this machine (no DHCP request reached it)"
        name = stage_names(self.timeline)[-1]
        last = self.timeline[-1]
        return f"{name} ({describe(last)})"


def stages_from(events: list[dict[str, Any]], started_wall: float,
                power_ons: Sequence[PowerOn] = ()) -> dict[str, float]:
    """Seconds from QEMU's start to each stage's first event. With `power_ons`, each power-on's
    events are named on their own (a download after the second power-on's DHCP is not the first's
    "initrd3")."""
    named = [(n, e) for p in power_ons for n, e in zip(stage_names(list(p.events)), p.events, strict=True)]
    out: dict[str, float] = {}
    for name, event in named or zip(stage_names(events), events, strict=True):
        if name not in out and isinstance(event.get("time"), (int, float)):
            out[name] = round(max(0.0, event["time"] - started_wall), 2)
    return out
