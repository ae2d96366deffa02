"""Shared settings of the fuzz targets: example counts, seed corpora, the example configuration.

Short by default (the whole of tests/fuzz runs in about half a minute in the normal suite);
`NETBOOTD_FUZZ_EXAMPLES=N` runs every target for N examples (see tests/fuzz/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
EXAMPLE_CONFIG = HERE.parents[1] / "etc" / "netbootd"

EXAMPLES = int(os.environ.get("NETBOOTD_FUZZ_EXAMPLES", "0") or 0)


def fuzz(default: int, **kw) -> settings:
    """Hypothesis settings for one target: `default` examples, or NETBOOTD_FUZZ_EXAMPLES."""
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
        **kw,
    )


def corpus_files(target: str) -> list[tuple[str, bytes]]:
    """(name, contents) of every seed file of a target, sorted by name."""
    return [(p.name, p.read_bytes()) for p in sorted((CORPUS / target).iterdir()) if p.is_file()]


def corpus(target: str) -> list[bytes]:
    return [data for _name, data in corpus_files(target)]


def corpus_lines(target: str) -> list[str]:
    out = []
    for data in corpus(target):
        out += [line for line in data.decode("utf-8").splitlines() if line.strip()]
    return out


# ------------------------------------------------------------------ byte mutations of seeds

MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "extend", "splice", "repeat", "interesting")
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x00\x01", b"\x01\x00", b"\xff\x00")


def mutated(seeds: list[bytes], max_ops: int = 8, ops: tuple[str, ...] = MUTATIONS):
    """A strategy: a seed with 1..max_ops random edits (AFL-style havoc, driven by hypothesis so
    failures shrink to a minimal edit list)."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, max_ops))):
            op = draw(st.sampled_from(ops))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
            elif op == "delete" and data:
                del data[pos : pos + draw(st.integers(1, 40))]
            elif op == "truncate":
                del data[pos:]
            elif op == "extend":
                data += draw(st.binary(max_size=300))
            elif op == "splice":
                other = draw(st.sampled_from(seeds))
                start = draw(st.integers(0, len(other)))
                data[pos:] = other[start:]
            elif op == "repeat" and data:
                chunk = bytes(data[pos : pos + draw(st.integers(1, 16))])
                data[pos:pos] = chunk * draw(st.integers(1, 20))
            elif op == "interesting":
                value = draw(st.sampled_from(INTERESTING))
                data[pos : pos + len(value)] = value
        return bytes(data)

    return build()
