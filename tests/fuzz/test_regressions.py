"""Bugs the fuzz targets found, each pinned by the smallest input that showed it.

Every one of these raised an exception out of load_settings / load_machines (and so out of
`netbootd check`, `serve` at start-up, or a reload) instead of becoming a ConfigError.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd.cli import main
from netbootd.config.errors import ConfigInvalid
from netbootd.config.machinesdir import load_machines
from netbootd.config.settings import Settings
from netbootd.config.settingsfile import load_settings


def _settings_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "netbootd.toml"
    path.write_text(text)
    with pytest.raises(ConfigInvalid) as exc:
        load_settings(path)
    return str(exc.value)


def _machine_errors(tmp_path: Path, text: str) -> list[str]:
    machines = tmp_path / "machines"
    machines.mkdir(exist_ok=True)
    (machines / "default.toml").write_text(text)
    result = load_machines(Settings(machines_dir=machines, files_root=tmp_path / "files"))
    assert "default" in result.failed
    return [str(e) for e in result.errors]


def test_integer_too_large_for_a_float_setting(tmp_path):
    # was: OverflowError (int too large to convert to float) from typed._convert
    assert "shutdown_grace: expected a number, got an integer too large" in _settings_error(
        tmp_path, "shutdown_grace = " + "9" * 400 + "\n"
    )


def test_arrays_nested_too_deeply(tmp_path):
    # was: RecursionError from tomllib, out of read_toml (settings and machine files alike)
    assert "nested too deeply" in _settings_error(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    errors = _machine_errors(tmp_path, "vars = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n")
    assert any("nested too deeply" in e for e in errors)


def test_ignition_whose_ignition_key_is_not_an_object(tmp_path):
    # was: AttributeError ('int' object has no attribute 'get') in _Loader._ignition
    errors = _machine_errors(tmp_path, '[boot]\nlocal = true\n[ignition]\ninline = \'{"ignition": 5}\'\n')
    assert any('needs "ignition": {"version"' in e for e in errors)


def test_ignition_file_name_with_a_nul_byte(tmp_path):
    # was: ValueError (embedded null byte) from Path.read_bytes in _Loader._ignition
    errors = _machine_errors(tmp_path, '[boot]\nlocal = true\n[ignition]\nfile = "a\\u0000b"\n')
    assert any("ignition.file: cannot read" in e for e in errors)


def test_ignition_json_nested_too_deeply(tmp_path):
    # was: RecursionError from json.loads in _Loader._ignition
    errors = _machine_errors(tmp_path, '[boot]\nlocal = true\n[ignition]\ninline = "' + "[" * 100_000 + '"\n')
    assert any("ignition.inline: Ignition config is not valid JSON" in e for e in errors)


def test_template_nested_too_deeply(tmp_path):
    # was: RecursionError from Jinja's parser in templates.compile_template
    errors = _machine_errors(tmp_path, '[boot]\nscript = "{{' + "(" * 5000 + "1" + ")" * 5000 + '}}"\n')
    assert any("boot.script: template expression nested too deeply" in e for e in errors)


def test_booty_action_that_is_not_a_string(tmp_path):
    # was: TypeError (unhashable type: 'list') in _Loader._booty
    errors = _machine_errors(tmp_path, '[boot]\nlocal = true\n[booty]\naction = []\n')
    assert any('booty.action: expected "writeImage" or "readImage"' in e for e in errors)


def test_check_reports_them_instead_of_a_traceback(tmp_path, capsys):
    (tmp_path / "machines").mkdir()
    (tmp_path / "machines" / "default.toml").write_text('[boot]\nlocal = true\n[ignition]\ninline = \'{"ignition": []}\'\n')
    assert main(["check", str(tmp_path)]) == 1
    assert "default.toml" in capsys.readouterr().out


# ------------------------------------------------------------------ HTTP (tests/fuzz/test_http.py)


def test_http_host_header_werkzeug_cannot_encode(daemon_factory):
    # was: werkzeug's BadHost raised out of Klein before routing: 500 "Processing Failed" and a
    # traceback in the log, for any client sending a Host label longer than 63 characters
    d = daemon_factory()
    (d.machines / "default.toml").write_text('[boot]\nchain = "http://x/y"\n')
    d.start()
    r = d.get("/ipxe?mac=52:54:00:00:00:01", headers={"host": "a" * 300})
    assert r.status_code == 400 and r.text.startswith("bad request")
    # was: Klein answered 400 but logged a traceback for every such request (log flooding)
    assert d.get("/files/%ff%fe").status_code == 400
    assert d.get("/ipxe?mac=52:54:00:00:00:01").status_code == 200
    log = d.log()
    assert "Traceback" not in log and "Processing Failed" not in log and "Invalid encoding" not in log
