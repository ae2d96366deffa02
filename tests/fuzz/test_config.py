"""Fuzz configuration loading: random TOML text, TOML documents built from the real keys with
values of every type, and line mutations of the shipped example configuration (etc/netbootd).

Properties: `load_settings` raises nothing but ConfigInvalid; `load_machines` and `build_catalog`
raise nothing (errors come back as ConfigError objects); `netbootd check` returns 0, 1 or 2 and
never prints a traceback; and whatever a fuzzed configuration *does* load serves without surprises:
the core's script/decide/ignition/booty/httpboot answers raise only the core's own refusals.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.cli import main as cli_main
from netbootd.config.catalog import build_catalog
from netbootd.config.errors import ConfigError, ConfigInvalid
from netbootd.config.machinesdir import load_machines
from netbootd.config.settingsfile import load_settings
from netbootd.config.templates import TemplateError
from netbootd.core.decide import BootCore, Denied, NoScript
from netbootd.core.files import FileError
from netbootd.model import Arch, Client, Firmware
from tests.fuzz.conftest import EXAMPLE_CONFIG, EXAMPLES, corpus_files, fuzz

# ------------------------------------------------------------------ a TOML writer for generated values


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(doc: dict) -> str:
    """Scalars first, then one [table] per top-level dict (nested dicts inline)."""
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_string(key)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ values and documents

# No "/" in generated strings: a generated path stays inside the example's own directory.
SAFE_TEXT = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), max_size=20)
INTERESTING_STRINGS = st.sampled_from([
    "", " ", "vmlinuz", "initrd.img", "uki.efi", "files", "machines", "..", ".", "nosuch",
    "http://mirror.example/k", "https://x", "tftp://x/y", "ftp://x", "://", "http://",
    "{{ hostname }}", "{{ mac }} {{ ignition_url }}", "{{ file('vmlinuz') }}", "{{ file('nosuch') }}",
    "{{ nosuch }}", "{{", "{% if %}", "{{ vars.x }}", "{{ ''.__class__ }}", "{{ range(10) | list }}",
    "${mac}", "#!ipxe\nexit\n", "ghcr.io/org/os:1.0", "ghcr.io/org/os@sha256:" + "0" * 64, "docker.io/x",
    "52:54:00:12:34:56", "4c4c4544-0042-4810-8056-b4c04f395931", "00000000-0000-0000-0000-000000000000",
    "writeImage", "readImage", "/dev/sda", "10.0.0.1", "0.0.0.0", "256.1.1.1", "text", "json", "debug", "bogus",
    '{"ignition": {"version": "3.4.0"}}', '{"ignition": {"version": 3}}', '{"ignition": []}', "[]", "null",
])
# Cheap to draw (generation, not the code under test, would otherwise take most of the time).
SCALARS = st.one_of(
    INTERESTING_STRINGS,
    SAFE_TEXT,
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 7, 8, 69, 1468, 65535, 65536, 2**64, 10**400, -(10**400)]),
    st.sampled_from([0.0, -0.0, 0.5, 1e-300, 1e300, float("inf"), float("-inf"), float("nan")]),
    st.sampled_from([datetime.date(2020, 1, 2), datetime.datetime(1979, 5, 27, 7, 32), datetime.time(7, 32)]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(INTERESTING_STRINGS | SAFE_TEXT, inner, max_size=3),
    max_leaves=4,
)

SETTINGS_KEYS = {
    "": ["advertise", "machines_dir", "files_root", "state_dir", "cache_dir", "shutdown_grace", "bogus"],
    "ipxe": ["bios", "efi32", "efi64", "arm32", "arm64", "x"],
    "dhcp": ["enabled", "port", "proxy_port", "interfaces"],
    "tftp": ["enabled", "port", "listen", "root", "ipxe_dir", "max_transfers", "timeout", "retries", "max_blksize",
             "rate_limit", "rate_burst"],
    "http": ["enabled", "port", "listen", "public_url", "signed_url_ttl", "rate_limit", "rate_burst", "max_transfers",
             "max_queued", "queue_timeout", "stall_timeout", "max_url_length", "max_header_bytes", "max_headers"],
    "registry": ["allowed", "insecure", "auth_file", "architecture", "cache_max_bytes"],
    "log": ["format", "level"],
}
MACHINE_KEYS = {
    "": ["profile", "uuid", "ipxe_binary", "signed_urls", "nosuch"],
    "vars": ["hostname", "rack", "mac", "x-y", "file"],
    "boot": ["kernel", "initrds", "cmdline", "image", "efi", "script", "chain", "local", "ignore", "other"],
    "ignition": ["file", "inline"],
    "booty": ["action", "sourceImage", "destinationDevice", "growPartition", "dryRun", "sourceDevice",
              "destinationAddress", "bogus"],
}


@st.composite
def document(draw, schema: dict[str, list[str]]) -> dict:
    doc: dict = {}
    for table in draw(st.lists(st.sampled_from(list(schema)), unique=True, max_size=4)):
        target = doc if not table else doc.setdefault(table, {})
        for key in draw(st.lists(st.sampled_from(schema[table]), unique=True, max_size=4)):
            target[key] = draw(VALUES)
    if draw(st.integers(0, 9)) == 0:  # now and then, a table where a value belongs (or the reverse)
        doc[draw(st.sampled_from([k for k in schema if k]))] = draw(SCALARS)
    return doc


MACHINE_NAMES = st.sampled_from([
    "default", "52-54-00-00-00-01", "52:54:00:00:00:02", "52-54-00-00-00-0A", "52-54-00-00-00-0a",
    "not-a-mac", "52-54-00-00-00", ".hidden",
])


@st.composite
def machines_tree(draw) -> dict[str, str | bytes]:
    """relative path → contents: machine files, a profile, an Ignition file."""
    files: dict[str, str | bytes] = {}
    for name in draw(st.lists(MACHINE_NAMES, unique=True, min_size=1, max_size=4)):
        doc = draw(document(MACHINE_KEYS))
        if draw(st.booleans()) and isinstance(doc.get("boot", {}), dict):
            doc.setdefault("boot", {})["kernel"] = "vmlinuz"  # often valid enough to get past the kind check
        files[f"{name}.toml"] = toml_document(doc)
    if draw(st.booleans()):
        files["profiles/worker.toml"] = toml_document(draw(document(MACHINE_KEYS)))
    files["ign.ign"] = draw(st.sampled_from([b'{"ignition": {"version": "3.4.0"}}', b"", b"\xff\xfe", b"[" * 50]))
    return files


# ------------------------------------------------------------------ the checks


@contextlib.contextmanager
def config_dir(settings_text: str | bytes, machines: dict[str, str | bytes] | None = None):
    with tempfile.TemporaryDirectory(prefix="nbfuzz-") as tmp:
        root = Path(tmp) / "cfg"  # one level down: ".." in a generated path stays in our directory
        (root / "machines" / "profiles").mkdir(parents=True)
        (root / "files").mkdir()
        (root / "files" / "vmlinuz").write_bytes(b"k")
        (root / "files" / "initrd.img").write_bytes(b"i")
        (root / "files" / "uki.efi").write_bytes(b"u")
        path = root / "netbootd.toml"
        path.write_bytes(settings_text if isinstance(settings_text, bytes) else settings_text.encode())
        for rel, data in (machines or {}).items():
            target = root / "machines" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data if isinstance(data, bytes) else data.encode())
        yield root


def check_settings(path: Path):
    try:
        settings = load_settings(path)
    except ConfigInvalid as exc:
        assert exc.errors and all(isinstance(e, ConfigError) for e in exc.errors)
        return None
    return settings


def check_cli(root: Path) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["check", str(root)])
    assert code in (0, 1, 2), (code, out.getvalue(), err.getvalue())
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code


def serve_everything(settings, catalog) -> None:
    """What a machine of this configuration would get, for every firmware and arch: only the
    core's own refusals may come out."""
    core = BootCore(settings, catalog)
    for machine in list(catalog.files.values())[:4]:
        mac = machine.mac or "52:54:00:99:99:99"
        for arch in (Arch.BIOS, Arch.EFI64, Arch.ARM64):
            for firmware in (Firmware.BIOS_PXE, Firmware.EFI_PXE, Firmware.HTTP_BOOT, Firmware.IPXE):
                core.decide(Client(mac, arch, firmware, machine.uuid), "192.0.2.1")
            with contextlib.suppress(NoScript, TemplateError, FileError):
                core.script(mac, machine.uuid, arch, "192.0.2.1:8080")
        with contextlib.suppress(Denied):
            core.ignition(mac, machine.uuid, "", "")
        with contextlib.suppress(Denied):
            core.booty(mac, None)
        core.httpboot([mac], "192.0.2.1")


def check_all(root: Path) -> None:
    settings = check_settings(root / "netbootd.toml")
    if settings is not None:
        result = load_machines(settings)
        assert all(isinstance(e, ConfigError) for e in result.errors)
        first = build_catalog(result)
        build_catalog(result, first)  # a reload on top of the last good catalog
        serve_everything(settings, first)
    check_cli(root)


BASE_SETTINGS = 'machines_dir = "machines"\nfiles_root = "files"\nstate_dir = "state"\n'


@fuzz(150)
@given(st.text(max_size=400) | st.binary(max_size=400))
def test_settings_random_text(text):
    with config_dir(text) as root:
        check_settings(root / "netbootd.toml")


@fuzz(150)
@given(document(SETTINGS_KEYS))
def test_settings_documents(doc):
    for table in ("", "tftp"):  # keep generated paths inside the example directory
        target = doc if not table else doc.get(table)
        if isinstance(target, dict):
            for key in ("machines_dir", "files_root", "state_dir", "cache_dir", "root", "ipxe_dir", "auth_file"):
                if key in target and isinstance(target[key], str):
                    target[key] = "x" + target[key].lstrip(".")
    with config_dir(toml_document(doc)) as root:
        check_settings(root / "netbootd.toml")


@fuzz(100)
@given(machines_tree())
def test_machine_files(tree):
    with config_dir(BASE_SETTINGS, tree) as root:
        check_all(root)


@fuzz(80)
@given(st.lists(st.tuples(MACHINE_NAMES, st.text(max_size=200) | st.binary(max_size=200)), min_size=1, max_size=3))
def test_machine_files_random_text(files):
    with config_dir(BASE_SETTINGS, {f"{name}.toml": data for name, data in files}) as root:
        check_all(root)


# ------------------------------------------------------------------ mutations of the example configuration

ALL_KEYS = sorted({k for keys in (*MACHINE_KEYS.values(), *SETTINGS_KEYS.values()) for k in keys})
EXAMPLE_FILES = sorted(p.relative_to(EXAMPLE_CONFIG).as_posix() for p in EXAMPLE_CONFIG.rglob("*") if p.is_file())


@st.composite
def mutated_line(draw, lines: list[str]) -> list[str]:
    lines = list(lines)
    op = draw(st.sampled_from(["delete", "duplicate", "value", "key", "insert", "truncate", "swap", "garble"]))
    i = draw(st.integers(0, max(len(lines) - 1, 0)))
    if not lines:
        return [toml_document(draw(document(MACHINE_KEYS)))]
    line = lines[i]
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, line)
    elif op == "value" and "=" in line:
        key = line.split("=", 1)[0]
        lines[i] = f"{key}= {toml_value(draw(VALUES))}"
    elif op == "key" and "=" in line:
        lines[i] = f"{toml_string(draw(SAFE_TEXT))} = " + line.split("=", 1)[1]
    elif op == "insert":
        table = draw(st.sampled_from(list(MACHINE_KEYS) + list(SETTINGS_KEYS)))
        key = draw(st.sampled_from(ALL_KEYS))
        lines.insert(i, (f"[{table}]\n" if table and draw(st.booleans()) else "") + f"{key} = {toml_value(draw(VALUES))}")
    elif op == "truncate":
        lines[i] = line[: draw(st.integers(0, len(line)))]
        del lines[i + 1 :]
    elif op == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "garble" and line:
        pos = draw(st.integers(0, len(line) - 1))
        lines[i] = line[:pos] + draw(st.text(max_size=5)) + line[pos + 1 :]
    return lines


@st.composite
def mutated_example(draw) -> dict[str, str]:
    """relative path → new text, for 1..3 files of etc/netbootd."""
    out = {}
    for rel in draw(st.lists(st.sampled_from(EXAMPLE_FILES), min_size=1, max_size=3, unique=True)):
        lines = (EXAMPLE_CONFIG / rel).read_text().splitlines()
        for _ in range(draw(st.integers(1, 4))):
            lines = draw(mutated_line(lines))
        out[rel] = "\n".join(lines) + "\n"
    return out


@contextlib.contextmanager
def example_copy(changes: dict[str, str]):
    with tempfile.TemporaryDirectory(prefix="nbfuzz-") as tmp:
        root = Path(tmp) / "cfg"
        shutil.copytree(EXAMPLE_CONFIG, root)
        # keep the daemon's own directories out of /var (the example's defaults)
        text = (root / "netbootd.toml").read_text()
        (root / "netbootd.toml").write_text(text.replace("/var/lib/netbootd", "state").replace("/var/cache/netbootd", "cache"))
        for rel, data in changes.items():
            if rel == "netbootd.toml":
                data = data.replace("/var/lib/netbootd", "state").replace("/var/cache/netbootd", "cache")
            (root / rel).write_text(data)
        yield root


def test_example_config_is_clean():
    """The unmutated example loads without errors (so mutations start from a good configuration)."""
    with example_copy({}) as root:
        settings = load_settings(root / "netbootd.toml")
        assert not load_machines(settings).errors
        assert check_cli(root) == 0


@fuzz(100)
@given(mutated_example())
def test_mutated_example_config(changes):
    with example_copy(changes) as root:
        check_all(root)


CONFIG_SEEDS = corpus_files("config")


@fuzz(100)
@given(st.sampled_from(CONFIG_SEEDS), st.integers(1, 4), st.data())
def test_mutated_config_corpus(seed, rounds, data):
    """tests/fuzz/corpus/config: settings-*.toml become netbootd.toml, the rest a machine file
    (with the profile machine-kernel.toml asks for), each mutated line by line."""
    name, text = seed
    lines = text.decode().splitlines()
    for _ in range(rounds):
        lines = data.draw(mutated_line(lines))
    mutated_text = "\n".join(lines) + "\n"
    profile = {"profiles/worker.toml": "[vars]\nrole = \"worker\"\n"}
    if name.startswith("settings-"):
        with config_dir(mutated_text, profile) as root:
            check_all(root)
    else:
        with config_dir(BASE_SETTINGS, {"52-54-00-00-00-01.toml": mutated_text, **profile}) as root:
            check_all(root)


@pytest.mark.parametrize("name", [n for n, _ in CONFIG_SEEDS])
def test_config_corpus_seeds(name):
    """The seeds are what their names say: machine-* and settings-every-key load cleanly,
    regress-* (inputs that once raised) load with errors."""
    text = dict(CONFIG_SEEDS)[name].decode()
    profile = {"profiles/worker.toml": "[vars]\nrole = \"worker\"\n"}
    settings_text, machines = (text, profile) if name.startswith("settings-") else (
        BASE_SETTINGS, {"52-54-00-00-00-01.toml": text, **profile})
    with config_dir(settings_text, machines) as root:
        check_all(root)
        settings = check_settings(root / "netbootd.toml")
        clean = name.startswith("machine-") or name == "settings-every-key.toml"
        assert (settings is not None and not load_machines(settings).errors) == clean


@pytest.mark.parametrize("seed", range(3 if not EXAMPLES else 20))
def test_check_command_exit_codes(seed, tmp_path):
    """`python -m netbootd check` as a process, on mutated examples: exit 0, 1 or 2, no traceback."""
    import random

    rng = random.Random(seed)
    with example_copy({}) as root:
        for rel in rng.sample(EXAMPLE_FILES, 2):
            lines = (root / rel).read_text().splitlines()
            for _ in range(3):
                if lines:
                    i = rng.randrange(len(lines))
                    lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)] + rng.choice(["", "[", "= 1", '"', "{{"])
            (root / rel).write_text("\n".join(lines) + "\n")
        proc = subprocess.run([sys.executable, "-m", "netbootd", "check", str(root)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode in (0, 1, 2), proc
        assert "Traceback" not in proc.stderr + proc.stdout
    missing = subprocess.run([sys.executable, "-m", "netbootd", "check", str(tmp_path / "nosuch")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_serialiser_round_trips():
    """The TOML writer above writes what tomllib reads back (or the fuzzing would test the writer)."""
    import tomllib

    doc = {"a": "x\u0001\"\\", "b": [1, 2.5, True], "t": {"k": {"n": "v"}, "d": datetime.date(2020, 1, 2)}}
    assert tomllib.loads(toml_document(doc)) == json.loads(json.dumps(doc, default=str)) | {
        "t": {"k": {"n": "v"}, "d": datetime.date(2020, 1, 2)}
    }
