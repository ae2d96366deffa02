"""The committed DHCPv6 fixtures are exactly the captured datagrams (when the captures are here)."""

from __future__ import annotations

import pytest

from tests.dhcp.conftest import CAPTURES
from tests.dhcp6.conftest import FIXTURES, fixtures
from tests.dhcp6.extract_fixtures import CAPTURE_FILES, extract

have_captures = all((CAPTURES / name).is_file() for name in CAPTURE_FILES)


def test_fixtures_are_committed():
    found = fixtures()
    assert len(found) == 40  # 15 + 13 + 12 DHCPv6 datagrams in the three captures
    assert {f.capture for f in found} == {name.removesuffix(".pcap") for name in CAPTURE_FILES}
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for f in found:
        assert f"`{f.name}`" in readme


@pytest.mark.skipif(
    not have_captures,
    reason=f"DHCPv6 captures not found at {CAPTURES} (../shared/captures beside the repo, or set NETBOOTD_CAPTURES)",
)
def test_fixtures_match_the_captures():
    extracted = {name: payload for name, payload, _text in extract(CAPTURES)}
    committed = {f.name: f.payload for f in fixtures()}
    assert committed == extracted
