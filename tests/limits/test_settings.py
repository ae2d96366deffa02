"""The limit settings are validated when netbootd.toml is loaded, each error naming its key."""

from __future__ import annotations

import pytest

from netbootd.config.errors import ConfigInvalid
from netbootd.config.settings import HttpSettings, TftpSettings
from netbootd.config.settingsfile import load_settings


def test_defaults_and_example(tmp_path):
    path = tmp_path / "netbootd.toml"
    path.write_text("")
    s = load_settings(path)
    assert s.http == HttpSettings() and s.tftp == TftpSettings()
    assert (s.http.rate_limit, s.http.rate_burst, s.http.max_transfers) == (50.0, 200, 1024)
    assert (s.tftp.rate_limit, s.tftp.rate_burst) == (20.0, 40)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nrate_limit = -1", "http.rate_limit"),
        ("[http]\nrate_limit = nan", "http.rate_limit"),
        ("[http]\nrate_limit = inf", "http.rate_limit"),
        ("[tftp]\nrate_limit = -0.5", "tftp.rate_limit"),
        ("[http]\nrate_burst = 0", "http.rate_burst"),
        ("[tftp]\nrate_burst = 0", "tftp.rate_burst"),
        ("[http]\nmax_transfers = 0", "http.max_transfers"),
        ("[http]\nmax_url_length = 10", "http.max_url_length"),
        ("[http]\nmax_header_bytes = 100", "http.max_header_bytes"),
        ("[http]\nmax_headers = 2", "http.max_headers"),
        ("[http]\nstall_timeout = -1", "http.stall_timeout"),
        ("[tftp]\ntimeout = 0", "tftp.timeout"),
        ("shutdown_grace = nan", "shutdown_grace"),
        ('[http]\nrate_limit = "fast"', "http.rate_limit"),
    ],
)
def test_bad_values_name_their_key(tmp_path, text, key):
    path = tmp_path / "netbootd.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigInvalid) as exc:
        load_settings(path)
    assert [e.key for e in exc.value.errors] == [key]
    assert exc.value.errors[0].line == 2 or key == "shutdown_grace"


def test_zero_turns_rate_limits_off(tmp_path):
    path = tmp_path / "netbootd.toml"
    path.write_text("[http]\nrate_limit = 0\nstall_timeout = 0\n[tftp]\nrate_limit = 0\n")
    s = load_settings(path)
    assert s.http.rate_limit == 0 and s.tftp.rate_limit == 0 and s.http.stall_timeout == 0
