"""Power-ons: one machine's run split where it was powered on again, and the path each one took.

A machine that follows its reboots (`Lab.launch(disk=...)`, `netbootd try --disk`) goes through
several power-ons in one QEMU process: a guest's reboot resets the machine. A power-on begins

1. when QEMU starts (the first);
2. where the console shows the firmware starting again (`FirmwareKind.start`): SeaBIOS's banner
   `SeaBIOS (version ...)`, AAVMF's `UEFI firmware (version ...)`, and for Debian's OVMF, which
   prints no banner, its terminal driver clearing the screen and setting the mode
   (`ESC[2J ESC[01;01H ESC[=3h`) as it starts. The console has no clock: the lab stamps each start
   with the time it first saw it (it reads the console about every 0.2 s; the firmware's first
   DHCP request comes seconds later), and the caller hands those times in (`seen`);
3. when the console shows none of that (not even for the first power-on: the machine's console
   is elsewhere, or the firmware prints nothing), at a new DHCP exchange for the MAC in netbootd's
   timeline: a firmware's DHCP request after this power-on got past its network boot — a script,
   a beacon or Ignition was fetched, or (for a firmware other than iPXE, whose own DHCP after the
   firmware loaded it belongs to the same boot) a file was downloaded over TFTP or HTTP.

netbootd's events are filed under the power-on in progress when they began (a TFTP or HTTP
transfer is reported when it ends: it began `seconds` earlier).

A power-on's path: `network` when netbootd saw it or its console shows a network boot (SeaBIOS
`Booting from ROM`, iPXE, OVMF's `>>Start PXE`/`>>Start HTTP Boot`), then netbootd's stages as
`stage_names` names them (a repeat once; a beacon by its name: `local` is `local boot`), then
`disk` when the console shows the firmware booting the disk (SeaBIOS `Booting from Hard Disk`,
OVMF/AAVMF loading a boot entry that is not PXE or HTTP, netbootd's GRUB chainloading the disk's
loader) — `disk (no network boot)` when it went
there without trying the network — and how it ended: `reboot`, `power off`, `kernel panic`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from netbootd.testing.results import ANSI, PANIC, PowerOn, stage_names

_UEFI_NET = r"\"UEFI (?:PXE|HTTP)"
NETWORK = re.compile(rf"Booting from ROM|iPXE initialising devices|>>Start (?:PXE|HTTP Boot) over|"
                     rf"BdsDxe: (?:loading|starting) Boot[0-9A-Fa-f]+ {_UEFI_NET}")
# netbootd's GRUB says so as it chainloads the disk's loader, and when none booted (loaders/grub.py)
DISK = re.compile(r"Booting from Hard Disk|BdsDxe: loading Boot[0-9A-Fa-f]+ \"(?!UEFI (?:PXE|HTTP)|EFI Internal Shell)|"
                  r"netbootd: chainloading \(")
NOT_BOOTABLE = re.compile(r"Boot failed: not a bootable disk|failed to (?:load|start) Boot[0-9A-Fa-f]+ \"(?!UEFI (?:PXE|HTTP))|"
                          r"netbootd: no \S+ booted from any disk")
NO_DEVICE = re.compile(r"No bootable device")
RESTART = re.compile(r"reboot: (?:Restarting system|machine restart)|Rebooting in \d+ seconds")
POWER_DOWN = re.compile(r"reboot: (?:Power down|System halted)")
_ESCAPES = re.compile(r"\x1b\[[=?]?[0-9;]*[A-Za-z]|\x1b[()c][A-Za-z0-9]?|\r")
# past its network boot: a DHCP request after one of these is the firmware starting over
_PROGRESS = frozenset({"script", "beacon", "ignition"})
_DOWNLOADS = frozenset({"tftp", "http"})
ENDS = frozenset({"reboot", "power off", "kernel panic"})


def ended(power_on: PowerOn, label: str) -> PowerOn:
    """`power_on` with how the run ended in it (`expect matched`, `timed out`), before its own end."""
    parts = list(power_on.path)
    at = len(parts) - 1 if parts and parts[-1] in ENDS else len(parts)
    return attrs.evolve(power_on, path=(*parts[:at], label, *parts[at:]))


def number_of(power_ons: Sequence[PowerOn], event: Mapping[str, Any]) -> int:
    """The power-on an event belongs to (1 when there are none yet)."""
    at = began(event)
    return max((p.number for p in power_ons if p.started <= at), default=1)


def began(event: Mapping[str, Any]) -> float:
    """When an event's request began: a transfer is reported at its end, `seconds` after."""
    at = float(event.get("time", 0.0))
    seconds = event.get("seconds")
    if event.get("stage") in _DOWNLOADS and isinstance(seconds, (int, float)):
        return at - seconds
    return at


def console_starts(raw: str, start: re.Pattern[str]) -> list[re.Match[str]]:
    """Where the (raw) console shows the firmware starting, the first power-on's included."""
    return list(start.finditer(raw))


def split(raw: str, events: Sequence[Mapping[str, Any]], *, start: re.Pattern[str], started: float,
          seen: Sequence[float] = (), console_at: Mapping[float, int] | None = None) -> list[PowerOn]:
    """The power-ons of one run (see the module doc). `raw`: its console as QEMU wrote it;
    `events`: netbootd's timeline for the MAC; `start`: the firmware's start on the console;
    `started`: when QEMU started; `seen[i]`: when the lab first saw console start i + 2 (the first
    is QEMU's start); `console_at`: for a power-on the timeline showed, the console's length (in
    `raw`) when the lab saw its DHCP request, where its console begins."""
    marks = console_starts(raw, start)
    # (time, console offset or None, how)
    starts: list[tuple[float, int | None, str]] = [(started, 0, "QEMU started")]
    for i, m in enumerate(marks[1:]):
        at = seen[i] if i < len(seen) else math.inf  # not stamped yet: after every event so far
        starts.append((at, m.start(), f"console: {_ESCAPES.sub('', m.group(0)).strip() or 'the firmware reset its terminal'}"))
    by_console = bool(marks)
    filed: list[list[Mapping[str, Any]]] = [[] for _ in starts]
    for event in sorted(events, key=began):
        at = began(event)
        i = max(k for k, s in enumerate(starts) if s[0] <= at or k == 0)
        if not by_console and _starts_over(event, filed[i]):
            when = float(event.get("time", at))
            offset = (console_at or {}).get(when)
            starts.append((when, offset, f"timeline: a new DHCP exchange ({event.get('firmware', '?')}, port "
                                         f"{event.get('port', '?')}) after {filed[i][-1].get('stage')}"))
            filed.append([])
            i = len(starts) - 1
        filed[i].append(event)
    # the console of each power-on: from its offset to the next known offset
    offsets = [s[1] for s in starts]
    out = []
    for i, (at, offset, how) in enumerate(starts):
        if offset is None:
            text = ""
        else:
            later = [o for o in offsets[i + 1:] if o is not None]
            text = ANSI.sub("", raw[offset:later[0] if later else len(raw)])
        last = i == len(starts) - 1
        out.append(PowerOn(i + 1, at, how, text, tuple(dict(e) for e in filed[i]), path(text, filed[i], last), offset))
    return out


def _starts_over(event: Mapping[str, Any], before: Sequence[Mapping[str, Any]]) -> bool:
    """A firmware's DHCP request after this power-on got past its network boot."""
    if event.get("stage") != "dhcp" or not before:
        return False
    stages = {e.get("stage") for e in before}
    if stages & _PROGRESS:
        return True
    return event.get("firmware") != "ipxe" and bool(stages & _DOWNLOADS)


def path(console: str, events: Sequence[Mapping[str, Any]], last: bool) -> tuple[str, ...]:
    """What one power-on went through (see the module doc); `last`: no power-on followed it."""
    parts: list[str] = []
    network = bool(events) or NETWORK.search(console) is not None
    if network:
        parts.append("network")
        parts.extend(_stages(events))
    disk = DISK.search(console)
    if disk is not None:
        where = "disk" if network else "disk (no network boot)"
        parts.append(f"{where}: not bootable" if NOT_BOOTABLE.search(console, disk.start()) else where)
    elif NO_DEVICE.search(console):
        parts.append("no bootable device")
    if not parts:
        parts.append("no boot seen")
    if PANIC.search(console):
        parts.append("kernel panic")
    elif not last or RESTART.search(console):
        parts.append("reboot")
    elif POWER_DOWN.search(console):
        parts.append("power off")
    return tuple(parts)


def _stages(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """netbootd's stages of one power-on, a repeat once; a DHCP exchange nobody answered says so."""
    out: list[str] = []
    answered: list[bool] = []
    for name, event in zip(stage_names([dict(e) for e in events]), events, strict=True):
        if name.startswith("beacon:"):
            name = "local boot" if name == "beacon:local" else name.removeprefix("beacon:")
        if out and out[-1] == name:
            answered[-1] = answered[-1] or "offered" in event
            continue
        out.append(name)
        answered.append(name != "dhcp" or "offered" in event)
    return [n if ok else f"{n} (not answered)" for n, ok in zip(out, answered, strict=True)]
