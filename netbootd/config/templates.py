"""Templates in command lines, iPXE scripts and chain URLs.

Jinja2's sandbox with StrictUndefined: `{{ hostname }}`, `{{ ignition_url }}`, `{{ file("kairos/config.yaml") }}`.
The `{{ }}` syntax matters: iPXE scripts use `${var}` themselves, so `string.Template` is out.
An unknown variable is an error at load time (the template is rendered once against a sample
context), never an empty string at boot time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import jinja2
import jinja2.sandbox

# Names every template can use; machine variables ([vars]) are added beside them.
BUILTINS = (
    "mac",  # 52:54:00:12:34:56
    "mac_hyphen",  # 52-54-00-12-34-56
    "uuid",  # SMBIOS UUID, "" when unknown
    "arch",  # bios, efi32, efi64, arm32, arm64
    "buildarch",  # iPXE's name: i386, x86_64, arm64
    "server",  # base URL of netbootd as this machine reaches it
    "machine",  # the config that answered: file stem or "default"
    "ignition_url",
    "booty_url",
    "beacon_url",
    "kernel_url",
    "initrd_urls",
    "squashfs_url",  # image boots with a squashfs layer; "" otherwise
    "done_url",  # [lifecycle] once: the installer calls it (GET or POST) when the disk is written
    "failed_url",  # ... and this one when it failed (append &reason=...)
    "vars",
)


SAMPLE_BASE = "http://192.0.2.1"  # TEST-NET-1: only ever used to validate templates


def sample_context(name: str, mac: str | None, uuid: str | None, variables: Mapping[str, str]) -> dict[str, Any]:
    """Plausible values for every built-in, to render a machine's templates once at load time (the
    boot-time context, netbootd.core.context, has exactly these names)."""
    mac = mac or "00:00:5e:00:53:01"  # RFC 7042 documentation MAC
    ident = f"mac={mac.replace(':', '-')}"
    ctx: dict[str, Any] = {
        "mac": mac,
        "mac_hyphen": mac.replace(":", "-"),
        "uuid": uuid or "00000000-0000-0000-0000-000000000000",
        "arch": "efi64",
        "buildarch": "x86_64",
        "server": SAMPLE_BASE,
        "machine": name,
        "ignition_url": f"{SAMPLE_BASE}/ignition?{ident}&exp=0&sig=0",
        "booty_url": f"{SAMPLE_BASE}/booty/0-0",
        "beacon_url": f"{SAMPLE_BASE}/beacon?{ident}",
        "kernel_url": f"{SAMPLE_BASE}/files/vmlinuz",
        "initrd_urls": f"{SAMPLE_BASE}/files/initrd.img",
        "squashfs_url": "",
        "done_url": f"{SAMPLE_BASE}/lifecycle/done?{ident}&exp=0&sig=0",
        "failed_url": f"{SAMPLE_BASE}/lifecycle/failed?{ident}&exp=0&sig=0",
        "vars": dict(variables),
    }
    ctx.update(variables)
    return ctx


class TemplateError(ValueError):
    pass


_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # output is a kernel command line or a script, not HTML
    keep_trailing_newline=True,
)


@attrs.frozen
class Template:
    """A compiled template that keeps its source: the last good copy of a machine is saved as
    text (netbootd.config.lastgood) and two loads of the same text compare equal."""

    source: str
    compiled: jinja2.Template = attrs.field(eq=False, repr=False)


def compile_template(text: str) -> Template:
    try:
        return Template(text, _ENV.from_string(text))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    except RecursionError:  # the parser recurses into nested expressions
        raise TemplateError("template expression nested too deeply") from None


def files_named(template: Template) -> tuple[str, ...]:
    """The files_root paths a template names with `file("...")` (literal arguments only), in order."""
    try:
        tree = _ENV.parse(template.source)
    except (jinja2.TemplateSyntaxError, RecursionError):
        return ()
    named = []
    for call in tree.find_all(jinja2.nodes.Call):
        if (isinstance(call.node, jinja2.nodes.Name) and call.node.name == "file" and call.args
                and isinstance(call.args[0], jinja2.nodes.Const) and isinstance(call.args[0].value, str)):
            named.append(call.args[0].value.lstrip("/"))
    return tuple(dict.fromkeys(named))


def render(template: Template, context: Mapping[str, Any], file_url: Callable[[str], str]) -> str:
    try:
        return template.compiled.render(**context, file=file_url)
    except jinja2.UndefinedError as exc:
        known = ", ".join(sorted(k for k in context if k != "vars"))
        raise TemplateError(f"{exc.message}; known variables: {known}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(str(exc)) from None
    except (FileNotFoundError, PermissionError, ValueError) as exc:
        raise TemplateError(str(exc)) from None
    except RecursionError:
        raise TemplateError("template expression nested too deeply") from None
