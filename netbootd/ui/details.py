"""What the machine and health pages show: one machine in full, and what is wrong.

Secrets stay hidden: `netbootd explain` without --show-secrets (no Ignition contents), signed
URLs' signatures blanked (the explanation is rendered with a throwaway key anyway, so a copied URL
opens nothing), and an inline Ignition config in a machine or profile file replaced by its size.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

from netbootd.config.machines import Catalog
from netbootd.config.settings import Settings
from netbootd.core.decide import BootCore
from netbootd.core.explain import explain_lines
from netbootd.core.lifecycle import SnapshotStore, StateStore
from netbootd.core.signing import UrlSigner

# `netbootd explain --firmware` names (explain's former names, which it still takes), in the order the page
# offers them (the firmware seen first)
FIRMWARE_ARCH = {("bios-pxe", "bios"): "bios", ("efi-pxe", "efi32"): "efi32", ("efi-pxe", "efi64"): "efi64",
                 ("efi-pxe", "arm64"): "arm64", ("http-boot", "efi64"): "http", ("http-boot", "arm64"): "http-arm64"}
MAX_FILE_SHOWN = 64 * 1024
_SIGNATURE = re.compile(r"([?&]sig=)[0-9A-Za-z_\-]+")
_BOOTY_TOKEN = re.compile(r"(/booty/)\d+-[0-9A-Za-z_\-]+(/)")
_HIDDEN = "(hidden)"


def hide_signatures(text: str) -> str:
    return _BOOTY_TOKEN.sub(r"\1(signed)\2", _SIGNATURE.sub(r"\1" + _HIDDEN, text))


def states_now(store: StateStore, mac: str) -> SnapshotStore:
    """One machine's lifecycle record as the daemon's store holds it now, for an explanation: taken
    on the reactor (the store's view is the reactor's), read in the thread that renders."""
    record = store.view().get(mac)
    return SnapshotStore({mac: record} if record is not None else {}, store.status())


def explanations(settings: Settings, catalog: Catalog, image_layers: dict, mac: str, server: str,
                 arch_keys: list[str], states: StateStore | None = None) -> dict[str, list[str]]:
    """`netbootd explain` for each firmware, as the running daemon's catalog answers, in the
    machine's lifecycle state (`states`: states_now(); a provisioned machine is offered its local
    boot, not its installer). Rendered on a throwaway core: its own timeline (a held machine's
    explanation records nothing in the real one) and a random signing key (the real key signs
    nothing here)."""
    core = BootCore(settings, catalog, signer=UrlSigner(secrets.token_bytes(32), settings.http.signed_url_ttl),
                    states=states)
    for (ref, arch), kinds in image_layers.items():
        core.image_resolved(ref, arch, kinds)
    out = {}
    for key in arch_keys:
        try:
            lines = explain_lines(core, mac, key, server)
        except Exception as exc:  # a template or file error explains itself; never a 500 for the page
            lines = [f"explain failed: {exc}"]
        out[key] = [hide_signatures(line) for line in lines]
    return out


def arch_order(row: dict[str, Any] | None) -> list[str]:
    """The explain keys, the firmware this machine was last seen with first."""
    keys = ["efi64", "bios", "http", "arm64", "http-arm64", "efi32"]
    seen = FIRMWARE_ARCH.get(((row or {}).get("firmware", ""), (row or {}).get("arch", "")))
    if seen:
        keys.remove(seen)
        keys.insert(0, seen)
    return keys


def shown_file(path: Path | None) -> dict[str, Any] | None:
    """A machine or profile file as the page shows it: its text, inline Ignition hidden."""
    if path is None:
        return None
    try:
        raw = path.read_bytes()[: MAX_FILE_SHOWN + 1]
    except OSError as exc:
        return {"path": str(path), "text": "", "error": f"cannot read: {exc.strerror or exc}"}
    text = raw[:MAX_FILE_SHOWN].decode("utf-8", errors="replace")
    doc: dict[str, Any] = {"path": str(path), "text": hide_inline_ignition(text)}
    if len(raw) > MAX_FILE_SHOWN:
        doc["truncated"] = True
    return doc


_INLINE = re.compile(r"^(\s*inline\s*=\s*)", re.MULTILINE)


def hide_inline_ignition(text: str) -> str:
    """The file with the value of [ignition] inline replaced by its size. If the value cannot be
    found with certainty (the result must parse, with the placeholder where the config was), the
    whole text is withheld rather than risk showing it."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        doc = None
    table = doc.get("ignition") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or "inline" not in table:
        if doc is None and "inline" in text:
            return "(not shown: the file does not parse and may hold an inline Ignition config)"
        return text
    secret = str(table["inline"])
    placeholder = f"(inline Ignition config, {len(secret.encode())} bytes, hidden)"
    for match in _INLINE.finditer(text):
        value_start = match.end()
        rest = text[value_start:]
        end = _toml_string_end(rest)
        if end is None:
            continue
        candidate = text[:value_start] + '"' + placeholder + '"' + rest[end:]
        try:
            again = tomllib.loads(candidate)
        except (tomllib.TOMLDecodeError, RecursionError):
            continue
        if isinstance(again.get("ignition"), dict) and again["ignition"].get("inline") == placeholder:
            return candidate
    return "(not shown: this file holds an inline Ignition config)"


def _toml_string_end(rest: str) -> int | None:
    """Length of the TOML string literal at the start of `rest`, None if it is not one."""
    for quote in ('"""', "'''"):
        if rest.startswith(quote):
            close = rest.find(quote, 3)
            while close != -1 and quote == '"""' and _escaped(rest, close):
                close = rest.find(quote, close + 1)
            if close == -1:
                return None
            end = close + 3
            while end < len(rest) and rest[end] == quote[0]:  # up to two quotes may end the string
                end += 1
            return end
    if rest.startswith("'"):
        close = rest.find("'", 1)
        return None if close == -1 else close + 1
    if rest.startswith('"'):
        i = 1
        while i < len(rest):
            if rest[i] == "\\":
                i += 2
                continue
            if rest[i] == '"':
                return i + 1
            if rest[i] == "\n":
                return None
            i += 1
    return None


def _escaped(text: str, i: int) -> bool:
    backslashes = 0
    while i > 0 and text[i - 1] == "\\":
        backslashes += 1
        i -= 1
    return backslashes % 2 == 1


def machine_errors(catalog: Catalog, mac: str, settings: Settings) -> list[dict[str, Any]]:
    """The configuration errors of this machine's file and of its profile, with file and line."""
    machine = catalog.machines.get(mac)
    held = catalog.held.get(mac)
    stem = machine.name if machine is not None else (held.name if held is not None else mac.replace(":", "-"))
    files = {settings.machines_dir / f"{stem}.toml"}
    if machine is not None:
        files.add(machine.source)
        if machine.profile:
            files.add(settings.machines_dir / "profiles" / f"{machine.profile}.toml")
    cause: Any = held.error if held is not None else catalog.stale.get(stem)
    if getattr(cause, "file", None) is not None:
        files.add(Path(cause.file))
    return [error_doc(e) for e in catalog.errors if Path(e.file) in files or _same_file(e.file, files)]


def _same_file(path: Path, files: set[Path]) -> bool:
    try:
        return any(Path(path).samefile(f) for f in files if f.exists())
    except OSError:
        return False


def error_doc(err: Any) -> dict[str, Any]:
    return {"file": str(err.file), "line": err.line, "key": err.key, "message": err.message, "text": str(err)}
