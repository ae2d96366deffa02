"""Which machine a request names by itself: a MAC address inside a TFTP file name or an HTTP path.

Per-machine files are named after the machine's MAC, in the dash form netbootd uses for file
names ("52-54-00-12-34-56/ipxe.efi"), in the colon form GRUB substitutes for `$net_default_mac`
("grub/machines/52:54:00:12:34:56.cfg"), or PXELINUX-style with the ARP hardware type first
("pxelinux.cfg/01-52-54-00-12-34-56"). A request for such a file is filed under that MAC in the
boot timeline, whatever address it came from.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# Six hex pairs with one separator throughout (the backreference), not inside a longer run of
# hex pairs or words: "01-" may precede it (PXELINUX), nothing else that looks like more of it.
_MAC_IN_PATH = re.compile(
    r"(?<![0-9A-Za-z:-])(?:01-)?"
    r"([0-9A-Fa-f]{2})([-:])([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})"
    r"(?![0-9A-Za-z:-])"
)


def mac_in_path(path: str) -> str | None:
    """The MAC a file path or URL path names ('52:54:00:12:34:56' form), None if it names none.

    None too when it names two different MACs: then it does not say whose request it is."""
    if "%" in path:
        path = unquote(path)  # HTTP paths arrive percent-encoded ("52%3A54%3A...")
    found = None
    for m in _MAC_IN_PATH.finditer(path):
        mac = ":".join(m.group(i) for i in (1, 3, 4, 5, 6, 7)).lower()
        if found is not None and mac != found:
            return None
        found = mac
    return found
