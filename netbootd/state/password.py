"""state.password_file: the PostgreSQL role's password, read with the rules of every secret file
(netbootd.secretfile): refused when others could read or replace it."""

from __future__ import annotations

from pathlib import Path

from netbootd.secretfile import read_private_file

SETTING = "state.password_file"
MAX_PASSWORD_BYTES = 1024


class PasswordFileError(Exception):
    pass


def read_password_file(path: Path) -> str:
    """The password: the file's one line, without its line ending."""
    data = read_private_file(
        path, MAX_PASSWORD_BYTES, "password file", PasswordFileError,
        missing="create it holding the password of the role in state.url (mode 0600)", not_regular="",
        exposed=(f"whoever can read it can change every machine's lifecycle state; run `chmod 600 {path}` "
                 "(a Kubernetes Secret: defaultMode: 0400)"))
    if len(data) > MAX_PASSWORD_BYTES:
        raise PasswordFileError(f"password file {path} is larger than {MAX_PASSWORD_BYTES} bytes: is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordFileError(f"password file {path} is not UTF-8 text: is it the right file?") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise PasswordFileError(f"password file {path} is empty: put the role's password in it")
    if "\n" in text:
        raise PasswordFileError(f"password file {path} holds more than one line: it must hold the password alone")
    return text
