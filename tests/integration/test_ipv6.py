"""IPv6-only boots (experiment)."""
from __future__ import annotations
import pytest
from .conftest import need

pytestmark = pytest.mark.integration
PXE = "52:54:00:66:00:01"


def test_uefi_pxe_over_ipv6(lab6):
    need("uefi6")
    lab6.kernel_machine(PXE, "pxe6", "pxe6-secret")
    lab6.start_netbootd()
    marker = lab6.booted(PXE, "uefi6", timeout=150)
    print(marker)
