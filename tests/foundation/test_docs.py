"""The documentation site (mkdocs.yml, docs/) and the README's way into it.

- The site builds with `mkdocs build --strict`, which fails on a page missing from the nav, a link to a
  page that does not exist and a link to an #anchor a page does not have (mkdocs.yml's `validation`).
- LinkChecker then walks the built site as a browser would, over HTTP on loopback (anchors inside
  directory URLs are checked over HTTP only, and as root LinkChecker drops to `nobody`, who cannot read a
  test's private directory): every internal link and anchor must resolve. External links are not fetched
  (the test must not depend on the internet); they are listed.
- Every link from README.md into docs/ names a page of the site, and its #anchor exists there.
- The settings reference lists exactly the settings of the schema (netbootd.config.settings, as
  settingsfile.py loads it) with their defaults, and the commented example etc/netbootd/netbootd.toml
  lists every one of them too.
- The machine-file page names every key a machine file may have and every template variable.
"""

from __future__ import annotations

import csv
import functools
import http.server
import io
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from netbootd.config.machinefile import _MACHINE_KEYS
from netbootd.config.settings import Settings
from netbootd.config.templates import BUILTINS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_site_builds_strictly_with_every_page(site):
    import yaml

    def pages(nav: Any) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        return [p for item in nav for p in pages(item)]

    # yaml.safe_load: mkdocs.yml uses no !tags
    nav = pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    for page in nav:
        built = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.is_file(), f"{page} in the nav but {built} was not built"
        # a fence Markdown did not take (inside a list item, say) shows its backticks on the page
        assert "```" not in built.read_text(), f"{page}: a code block was not rendered"
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk, "every page under docs/ is in the nav, and the nav names only pages that exist"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        pass

    def end_headers(self) -> None:
        # LinkChecker waits between requests to a host (10 a second) unless the host answers with this
        # header, which lets it go at `maxrequestspersecond`: a local site of a few hundred URLs in seconds.
        self.send_header("LinkChecker", "local test site")
        super().end_headers()


class _SiteServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """LinkChecker closes a connection once it has what it needs (a font's headers): not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _linkcheck(root: Path, workdir: Path) -> tuple[list[dict[str, str]], subprocess.CompletedProcess[str]]:
    """LinkChecker's verdict on every URL reachable from `root`/index.html, served on loopback."""
    server = _SiteServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = workdir / "linkcheckerrc"
    # AnchorCheck: the plugin that checks #fragments against the page's ids
    config.write_text("[checking]\nmaxrequestspersecond=1000\n\n[AnchorCheck]\n")
    try:
        run = subprocess.run(
            [str(BIN / "linkchecker"), "--config", str(config), "--no-status", "--no-robots", "--verbose",
             "--output", "csv", f"http://127.0.0.1:{server.server_address[1]}/"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    rows = list(csv.DictReader(io.StringIO("\n".join(
        line for line in run.stdout.splitlines() if line and not line.startswith("#")
    )), delimiter=";"))
    assert rows, run.stdout + run.stderr
    return rows, run


def _broken(rows: list[dict[str, str]]) -> list[str]:
    return [f"{r['parentname']}: {r['urlname']}: {r['result']} {r['warningstring']}"
            for r in rows if r["valid"] != "True" or r["warningstring"]]


def test_link_check_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    """The check below can fail: a page linking to a missing page and to an anchor its target lacks."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text('<html><body><a href="b.html#sec">ok</a> <a href="b.html#nope">anchor</a> '
                                     '<a href="gone.html">page</a></body></html>')
    (site / "b.html").write_text('<html><body><h2 id="sec">Sec</h2></body></html>')
    rows, run = _linkcheck(site, tmp_path)
    broken = "\n".join(_broken(rows))
    assert "gone.html" in broken and "b.html#nope" in broken and "b.html#sec" not in broken, broken
    assert run.returncode != 0


def test_built_site_links_and_anchors_resolve(site, tmp_path):
    rows, run = _linkcheck(site, tmp_path)
    broken = _broken(rows)
    assert not broken, "\n".join(broken)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    internal = [r for r in rows if r["url"].startswith("http://127.0.0.1:")]
    assert len({r["url"].split("#")[0] for r in internal}) > 20, "the walk did not get past the first page"
    assert any("#" in r["url"] for r in internal), "no anchor was checked"
    external = sorted({r["url"] for r in rows if not r["url"].startswith(("http://127.0.0.1:", "file:"))})
    print("external links, not fetched:", *external, sep="\n  ")


def test_readme_links_into_docs_resolve(site):
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)\s]+)\)", readme)
    assert len(links) > 15, links
    for link in links:
        path, _, anchor = link.partition("#")
        assert (REPO / path).is_file(), f"README links to {path}, which does not exist"
        page = Path(path).relative_to("docs")
        built = site / ("index.html" if str(page) == "index.md" else str(page.with_suffix("")) + "/index.html")
        if anchor:
            assert f'id="{anchor}"' in built.read_text(), f"README links to {link}: no such anchor in {page}"


def test_readme_keeps_the_two_commands_first():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[0] == "# netbootd" and lines[2] == "```sh"
    block = lines[3:lines.index("```", 3)]
    commands = [line for line in block if line and not line.startswith("#")]
    assert commands[0].startswith("apt-get update && apt-get install -y ipxe python3-venv")
    assert commands[0].endswith(".venv/bin/netbootd serve --config etc/netbootd/netbootd.toml")
    assert commands[1:] == ["bash .ci/run"]


# ---------------------------------------------------------------------------- the settings reference


def _schema() -> dict[str, Any]:
    """Every setting's dotted key → its default, as the schema has it."""
    out: dict[str, Any] = {}
    defaults = Settings()
    for field in attrs.fields(Settings):
        if field.name == "source":  # where the settings came from, not a setting
            continue
        value = getattr(defaults, field.name)
        if attrs.has(type(value)):
            for sub in attrs.fields(type(value)):
                out[f"{field.name}.{sub.name}"] = getattr(value, sub.name)
        else:
            out[field.name] = value
    return out


def _as_toml(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_as_toml(v) for v in value]
    return value


def _reference() -> dict[str, str]:
    """docs/configuration/settings.md's tables: key → the default column."""
    text = (DOCS / "configuration" / "settings.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| ([^|]+) \|", text, flags=re.M)
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), "a setting is listed twice"
    return {k: d.strip() for k, d in rows}


def test_settings_reference_lists_exactly_the_schema():
    schema, reference = _schema(), _reference()
    assert len(schema) > 60
    missing = sorted(schema.keys() - reference.keys())
    extra = sorted(reference.keys() - schema.keys())
    assert not missing, f"settings not in docs/configuration/settings.md: {missing}"
    assert not extra, f"docs/configuration/settings.md lists settings the schema does not have: {extra}"


def test_settings_reference_gives_the_schemas_defaults():
    schema, reference = _schema(), _reference()
    for key, default in schema.items():
        cell = reference[key]
        if default is None:
            assert cell == "unset", f"{key}: the schema has no default, the reference says {cell}"
            continue
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: {cell}"
        documented = tomllib.loads(f"v = {cell.strip('`')}")["v"]
        assert documented == _as_toml(default), f"{key}: the reference says {documented!r}, the schema {default!r}"


def test_example_settings_file_lists_every_setting():
    """etc/netbootd/netbootd.toml: every setting, as a key or as a commented-out `# key = ...` line."""
    section, found = "", set()
    for line in (REPO / "etc" / "netbootd" / "netbootd.toml").read_text().splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#? ?(\w+) = ", line):
            found.add(f"{section}.{m.group(1)}" if section else m.group(1))
    assert found == set(_schema()), (sorted(set(_schema()) - found), sorted(found - set(_schema())))


# ---------------------------------------------------------------------------- machine files


def test_machine_file_page_names_every_key_and_template_variable():
    text = (DOCS / "configuration" / "machines.md").read_text()
    table_keys = set(re.findall(r"^\| `\[?([a-z_]+)\]?` \|", text, flags=re.M))
    assert _MACHINE_KEYS <= table_keys, f"machine-file keys missing from the key table: {_MACHINE_KEYS - table_keys}"
    for name in BUILTINS:
        assert f"`{name}`" in text, f"template variable {name} is not documented in configuration/machines.md"


# ---------------------------------------------------------------------------- recipes


def test_every_recipe_is_a_machine_file_netbootd_check_accepts(tmp_path):
    """Each recipe's TOML, with stand-in files at the paths it names, loads cleanly (templates, keys,
    quoting): a recipe can be untried on real hardware, never a configuration error."""
    text = (DOCS / "recipes.md").read_text()
    blocks = re.findall(r"```toml\n# machines/([^\n]+\.toml)\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8, [name for name, _ in blocks]
    marks = re.findall(r"^\*\*(Proven in CI|Not tried here)\.\*\*", text, flags=re.M)
    assert len(marks) == len(blocks), "every recipe says whether it is proven in CI or not tried here"
    machines, files = tmp_path / "machines", tmp_path / "files"
    machines.mkdir()
    (tmp_path / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\n')
    host = tmp_path / "host"  # a recipe's absolute host paths (a Debian package's files) moved under here:
    for name, body in blocks:  # never write stand-ins over the real ones
        data = tomllib.loads(body)
        boot = data.get("boot", {})
        for location in {boot.get("kernel", ""), *boot.get("initrds", [])}:
            if location.startswith("/"):
                body = body.replace(f'"{location}"', f'"{host}{location}"')
        (machines / name).write_text(body)
        boot = tomllib.loads(body).get("boot", {})
        wanted = [boot.get("kernel", ""), *boot.get("initrds", []), *re.findall(r'file\("([^"]+)"\)', body)]
        for location in filter(None, wanted):
            path = Path(location) if location.startswith("/") else files / location
            if "://" in location:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stand-in")
        if "file" in data.get("ignition", {}):
            ignition = machines / data["ignition"]["file"]
            ignition.parent.mkdir(parents=True, exist_ok=True)
            ignition.write_text('{"ignition": {"version": "3.4.0"}}')
    run = subprocess.run([sys.executable, "-m", "netbootd", "check", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(blocks)} machine files" in run.stdout, run.stdout
