"""Loading netbootd.toml and the machines directory: defaults, profiles, and precise errors."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import attrs
import pytest

from netbootd.config.catalog import build_catalog
from netbootd.config.errors import ConfigInvalid, find_line
from netbootd.config.machines import BootKind
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import Settings
from netbootd.config.settingsfile import load_settings

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "machines" / "profiles").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    return tmp_path


def settings_for(conf: Path) -> Settings:
    return Settings(machines_dir=conf / "machines", files_root=conf / "files")


def test_settings_defaults_without_file():
    s = load_settings(None) if not Path("/etc/netbootd/netbootd.toml").exists() else Settings()
    assert s.dhcp.port == 67 and s.tftp.port == 69 and s.http.port == 80
    assert s.ipxe.bios == "undionly.kpxe" and s.ipxe.efi64 == "snponly.efi"
    assert s.registry.allowed == ("ghcr.io",)


def test_settings_relative_paths_are_relative_to_the_file(conf):
    cfg = write(conf / "sub" / "netbootd.toml", 'machines_dir = "m"\nfiles_root = "../files"\n[tftp]\nroot = "t"\n')
    s = load_settings(cfg)
    assert s.machines_dir == conf / "sub" / "m"
    assert s.files_root == conf / "sub" / ".." / "files"
    assert s.tftp.root == conf / "sub" / "t"
    assert s.source == cfg


def test_settings_errors_name_line_and_key(conf):
    cfg = write(
        conf / "netbootd.toml",
        """
        advertise = "not-an-ip"
        [http]
        port = "eighty"
        colour = "blue"
        [log]
        format = "xml"
        """,
    )
    with pytest.raises(ConfigInvalid) as info:
        load_settings(cfg)
    text = [str(e) for e in info.value.errors]
    assert f"{cfg}:1: advertise: expected an IPv4 address, got 'not-an-ip'" in text
    assert any(t.startswith(f"{cfg}:3: http.port: expected an integer") for t in text)
    assert any(t.startswith(f"{cfg}:4: http.colour: unknown setting") for t in text)
    assert any(t.startswith(f"{cfg}:6: log.format: expected") for t in text)
    assert len(text) == 4


def test_example_configuration_checks_clean():
    out = subprocess.run(
        [sys.executable, "-m", "netbootd", "check", str(REPO / "etc" / "netbootd")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: 8 machine files, no default" in out.stdout


def test_mac_file_names_any_case_colon_or_dash(conf):
    write(conf / "machines" / "52-54-00-AB-CD-EF.toml", "[boot]\nlocal = true\n")
    write(conf / "machines" / "52:54:00:12:34:56.toml", "[boot]\nlocal = true\n")
    result = load_machines(settings_for(conf))
    assert result.errors == []
    catalog = build_catalog(result)
    assert catalog.find("52:54:00:ab:cd:ef").name == "52-54-00-ab-cd-ef"
    assert catalog.find("52:54:00:12:34:56").name == "52-54-00-12-34-56"
    assert catalog.find("52:54:00:00:00:99") is None  # no default: no answer


def test_profile_merge_and_overrides(conf):
    write(
        conf / "machines" / "profiles" / "worker.toml",
        """
        [vars]
        role = "worker"
        [boot]
        kernel = "http://mirror/vmlinuz"
        initrds = ["http://mirror/initrd"]
        cmdline = "role={{ role }} host={{ hostname }}"
        """,
    )
    write(conf / "machines" / "52-54-00-00-00-01.toml", 'profile = "worker"\n[vars]\nhostname = "w1"\n')
    write(
        conf / "machines" / "52-54-00-00-00-02.toml",
        'profile = "worker"\n[vars]\nhostname = "w2"\nrole = "gpu"\n[boot]\nlocal = true\n',
    )
    result = load_machines(settings_for(conf))
    assert result.errors == []
    w1, w2 = result.machines["52-54-00-00-00-01"], result.machines["52-54-00-00-00-02"]
    assert w1.boot.kind is BootKind.KERNEL and w1.vars == {"role": "worker", "hostname": "w1"}
    assert w1.profile == "worker"
    # the machine's own boot kind replaces the profile's, its vars win
    assert w2.boot.kind is BootKind.LOCAL and w2.vars["role"] == "gpu"


def test_broken_directory_one_precise_message_per_file(conf):
    m = conf / "machines"
    write(m / "52-54-00-00-00-01.toml", "[boot\nkernel = 1\n")  # bad TOML
    write(m / "52-54-00-00-00-02.toml", '[boot]\nlocal = true\ncolour = "red"\n')  # unknown key in boot
    write(m / "not-a-mac.toml", "[boot]\nlocal = true\n")  # bad file name
    write(
        m / "52-54-00-00-00-03.toml",
        '[boot]\nkernel = "http://x/k"\ncmdline = "console=ttyS0 host={{ hostnmae }}"\n',
    )  # unknown variable
    write(m / "52-54-00-00-00-04.toml", '[boot]\nlocal = true\n\n[ignition]\ninline = "{ not json"\n')
    write(m / "52-54-00-00-00-05.toml", 'profile = "nosuch"\n')
    write(m / "52-54-00-00-00-06.toml", 'uuid = "xyz"\n[boot]\nlocal = true\n')
    write(m / "52-54-00-00-00-07.toml", '[boot]\nkernel = "vmlinuz-missing"\n')
    write(m / "52-54-00-00-00-08.toml", '[boot]\nimage = "quay.io/org/img:1"\n')
    write(m / "52-54-00-00-00-09.toml", '[boot]\nlocal = true\nignore = true\n')
    write(m / "52-54-00-00-00-0a.toml", '[boot]\nlocal = true\n[ignition]\ninline = \'{"x": 1}\'\n')
    write(m / "default.toml", '[boot]\nchain = "http://x/{{ mac }}"\n')  # fine
    write(m / "notes.txt", "ignored: not .toml")
    write(m / "..data", "ignored: ConfigMap internals")
    result = load_machines(settings_for(conf))
    got = sorted(str(e) for e in result.errors)
    expected_starts = sorted(
        [
            f"{m}/52-54-00-00-00-01.toml:1: invalid TOML:",
            f"{m}/52-54-00-00-00-02.toml:3: boot.colour: unknown key; expected one of:",
            f"{m}/not-a-mac.toml: file name is not a MAC address",
            f"{m}/52-54-00-00-00-03.toml:3: boot.cmdline: 'hostnmae' is undefined; known variables:",
            f"{m}/52-54-00-00-00-04.toml:5: ignition.inline: Ignition config is not valid JSON:",
            f"{m}/52-54-00-00-00-05.toml:1: profile: profile 'nosuch' does not exist",
            f"{m}/52-54-00-00-00-06.toml:1: uuid: expected an SMBIOS UUID",
            f"{m}/52-54-00-00-00-07.toml:2: boot.kernel: 'vmlinuz-missing' is not a URL and not a file under",
            f"{m}/52-54-00-00-00-08.toml:2: boot.image: registry 'quay.io' is not allowed; allowed registries: ghcr.io",
            f"{m}/52-54-00-00-00-09.toml:3: boot.ignore: choose one boot kind; found local and ignore",
            f"{m}/52-54-00-00-00-0a.toml:4: ignition.inline: Ignition config needs",
        ]
    )
    assert len(got) == len(expected_starts), "\n".join(got)
    for line, start in zip(got, expected_starts, strict=True):
        assert line.startswith(start), f"{line!r} does not start with {start!r}"
    assert set(result.machines) == {"default"}


def test_broken_profile_reported_at_the_profile(conf):
    m = conf / "machines"
    write(m / "profiles" / "bad.toml", '[boot]\nkernel = "http://x/k"\nwhat = 1\n')
    write(m / "52-54-00-00-00-01.toml", 'profile = "bad"\n')
    result = load_machines(settings_for(conf))
    text = [str(e) for e in result.errors]
    assert any(t.startswith(f"{m}/profiles/bad.toml:3: boot.what: unknown key; expected one of:") for t in text), text
    assert any("profile 'bad' has errors" in t for t in text)
    assert result.failed == {"52-54-00-00-00-01"}


def test_unused_profile_is_still_checked(conf):
    write(conf / "machines" / "profiles" / "lonely.toml", "colour = 1\n")
    result = load_machines(settings_for(conf))
    assert [e.key for e in result.errors] == ["colour"]


def test_cli_check_lists_errors_and_fails(conf):
    write(conf / "machines" / "zz.toml", "[boot]\nlocal = true\n")
    out = subprocess.run([sys.executable, "-m", "netbootd", "check", str(conf)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "zz.toml: file name is not a MAC address" in out.stdout
    assert "1 error(s)" in out.stderr


def test_failed_file_keeps_last_good_version(conf):
    m = conf / "machines"
    good = write(m / "52-54-00-00-00-01.toml", '[boot]\nkernel = "http://x/k"\n')
    first = build_catalog(load_machines(settings_for(conf)))
    good.write_text("[boot\n")
    second = build_catalog(load_machines(settings_for(conf)), first)
    assert second.find("52:54:00:00:00:01").boot.kernel == "http://x/k"
    assert len(second.errors) == 1
    good.unlink()
    third = build_catalog(load_machines(settings_for(conf)), second)
    assert third.find("52:54:00:00:00:01") is None  # deleted means gone


def test_missing_directory_keeps_everything(conf):
    m = conf / "machines"
    write(m / "52-54-00-00-00-01.toml", "[boot]\nlocal = true\n")
    first = build_catalog(load_machines(settings_for(conf)))
    import shutil

    shutil.rmtree(m)
    second = build_catalog(load_machines(settings_for(conf)), first)
    assert second.find("52:54:00:00:00:01") is not None
    assert "does not exist" in str(second.errors[0])


def test_template_file_function_and_missing_file(conf):
    (conf / "files" / "k").mkdir()
    (conf / "files" / "k" / "cfg.yaml").write_text("x: 1\n")
    write(conf / "machines" / "52-54-00-00-00-01.toml",
          '[boot]\nkernel = "http://x/k"\ncmdline = "config_url={{ file(\'k/cfg.yaml\') }}"\n')
    write(conf / "machines" / "52-54-00-00-00-02.toml",
          '[boot]\nkernel = "http://x/k"\ncmdline = "config_url={{ file(\'k/none.yaml\') }}"\n')
    result = load_machines(settings_for(conf))
    assert [e.key for e in result.errors] == ["boot.cmdline"]
    assert "no such file under" in result.errors[0].message
    assert "52-54-00-00-00-01" in result.machines


def test_vars_cannot_shadow_builtins(conf):
    write(conf / "machines" / "52-54-00-00-00-01.toml", '[vars]\nmac = "x"\n[boot]\nlocal = true\n')
    result = load_machines(settings_for(conf))
    assert [str(e).split(": ", 1)[1] for e in result.errors] == [
        "vars.mac: 'mac' is a built-in variable; pick another name"
    ]


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("a = 1\n[boot]\nkernel = 2\n", "boot.kernel", 3),
        ("boot.kernel = 2\n", "boot.kernel", 1),
        ('[boot]\n"kernel" = 2\n', "boot.kernel", 2),
        ("[boot]\nx = 1\n", "boot.kernel", 1),
        ("[vars]\nhostname = 'a'\n[boot]\nlocal = true\n", "vars.hostname", 2),
        ("boot = { kernel = 2 }\n", "boot.kernel", 1),
    ],
)
def test_find_line(text, key, line):
    assert find_line(text, key) == line


def _documented_settings(text: str) -> set[str]:
    """Every `key = value` line of the shipped settings file, commented out or not, as "table.key"
    (a commented-out key is one whose default is "unset")."""
    out, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^\s*\[([a-z_]+)\]", line)
        if header:
            table = header.group(1) + "."
        elif key := re.match(r"^\s*(?:#\s*)?([a-z_0-9]+)\s*=", line):
            out.add(table + key.group(1))
    return out


def _schema(cls, prefix: str = "") -> dict[str, object]:
    """The settings schema: "table.key" → default, from the attrs classes themselves."""
    attrs.resolve_types(cls)
    out: dict[str, object] = {}
    for field in attrs.fields(cls):
        if field.name == "source":
            continue
        if attrs.has(field.type):
            out.update(_schema(field.type, f"{prefix}{field.name}."))
        else:
            out[prefix + field.name] = field.default
    return out


def test_shipped_settings_file_lists_every_setting_with_its_default():
    """A new setting cannot be forgotten in etc/netbootd/netbootd.toml: every field of the settings
    schema is there (commented out when its default is "unset"), with its default value, and the
    file has nothing the schema does not know."""
    text = (REPO / "etc" / "netbootd" / "netbootd.toml").read_text()
    documented = _documented_settings(text)
    schema = _schema(Settings)
    assert sorted(schema) == sorted(documented), (
        f"missing from the file: {sorted(set(schema) - set(documented))}; "
        f"not settings: {sorted(set(documented) - set(schema))}"
    )
    # the example points at its own directories, and keeps a demo's state and cache beside itself
    example_only = {"machines_dir", "files_root", "state_dir", "cache_dir"}
    loaded = tomllib.loads(text)
    for key, default in schema.items():
        table, _, name = key.rpartition(".")
        section = loaded.get(table, {}) if table else loaded
        if key in example_only:
            continue
        if default is None:
            assert name not in section, f"{key} defaults to unset: show it commented out"
            continue
        value = section[name]
        want = list(default) if isinstance(default, tuple) else (str(default) if isinstance(default, Path) else default)
        assert value == want, f"{key}: the file says {value!r}, the default is {want!r}"
    assert "registry.auth_file" in documented


def test_relative_state_and_cache_go_where_the_service_manager_says(tmp_path, monkeypatch):
    """The example's state_dir = "state": beside the file from a checkout; under systemd's
    StateDirectory= (or the container's ENV) inside $STATE_DIRECTORY, never into /etc/netbootd."""
    from netbootd.config.settingsfile import load_settings

    cfg = tmp_path / "netbootd.toml"
    cfg.write_text('state_dir = "state"\ncache_dir = "cache"\n')
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    s = load_settings(cfg)
    assert (s.state_dir, s.cache_dir) == (tmp_path / "state", tmp_path / "cache")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/netbootd")
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/netbootd")
    s = load_settings(cfg)
    assert (s.state_dir, s.cache_dir) == (Path("/var/lib/netbootd/state"), Path("/var/cache/netbootd/cache"))
    cfg.write_text('state_dir = "/srv/nb"\n')  # an absolute path is the operator's word
    assert load_settings(cfg).state_dir == Path("/srv/nb")


def test_shipped_settings_file_marks_exactly_the_settings_a_reload_cannot_apply():
    """"(restart)" in etc/netbootd/netbootd.toml is netbootd.config.live's word, key by key: a
    setting made live (or no longer live) cannot keep a stale mark."""
    from netbootd.config.live import is_live

    table, table_restart, marks = "", False, {}
    for line in (REPO / "etc" / "netbootd" / "netbootd.toml").read_text().splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            table, table_restart = header.group(1), "(restart: every key)" in line
            continue
        key = re.match(r"^#? ?(\w+) = ", line)
        if key:
            name = f"{table}.{key.group(1)}" if table else key.group(1)
            marks[name] = table_restart or "(restart)" in line
    assert len(marks) == len(_schema(Settings))
    wrong = {k: ("marked (restart) but live" if marked else "needs a restart, not marked")
             for k, marked in marks.items() if marked == is_live(k)}
    assert not wrong, wrong
