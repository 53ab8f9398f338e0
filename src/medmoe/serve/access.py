"""Who may reach the page: logins read from a file or the environment (never the command line), the rule
that a page listening beyond this machine needs one, and the TLS files.

A login is ``user:password``: one per line of ``--auth-file PATH`` (blank lines and ``#`` comments skipped),
or the value of ``MEDMOE_SERVE_AUTH`` (one per line as well) when no file is given. Neither ever appears in
the shell history or in ``ps``. Gradio then asks for a login on the page, and refuses every file and API
route to a request without the session cookie that the login sets.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path

from medmoe.errors import InvalidInputError

logger = logging.getLogger(__name__)

AUTH_ENV = "MEDMOE_SERVE_AUTH"
MAX_AUTH_FILE_BYTES = 64 * 1024
PUBLIC_FLAG = "--no-auth-on-public-host"


def parse_logins(text: str, where: str) -> list[tuple[str, str]]:
    """``(user, password)`` pairs from ``user:password`` lines (the first ``:`` splits; the password may hold
    more, and spaces; the user name is stripped, as the login form strips it).

    Raises:
        InvalidInputError: a line without ``:``, an empty user or password, a user named twice, no login at all.
            The message names the line number, never its content.
    """
    logins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise InvalidInputError(f"{where}, line {number}: expected user:password (a user name, a colon, a "
                                    "non-empty password)")
        if user in logins:
            raise InvalidInputError(f"{where}, line {number}: user {user!r} is given twice")
        logins[user] = password
    if not logins:
        raise InvalidInputError(f"{where}: holds no user:password line")
    return list(logins.items())


def read_auth_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The logins of ``--auth-file``; warns when other users of this machine may read the file.

    Raises:
        InvalidInputError: the file is missing, not a regular file, over 64 KiB, not UTF-8, or malformed.
    """
    where = f"--auth-file {path}"
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"{where}: not a regular file")
        if info.st_size > MAX_AUTH_FILE_BYTES:
            raise InvalidInputError(f"{where}: {info.st_size:,} bytes; a file of user:password lines is far smaller")
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise InvalidInputError(f"{where}: cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"{where}: not UTF-8 text") from err
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning("%s: other users of this machine can read it (chmod 600 %s)", where, path)
    return parse_logins(text, where)


def logins(auth_file: str | os.PathLike | None, environ: dict | None = None) -> list[tuple[str, str]] | None:
    """The logins in force: ``auth_file``'s, else ``MEDMOE_SERVE_AUTH``'s, else None (no login)."""
    environ = os.environ if environ is None else environ
    if auth_file:
        return read_auth_file(auth_file)
    if environ.get(AUTH_ENV, "").strip():
        return parse_logins(environ[AUTH_ENV], AUTH_ENV)
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1): only this machine reaches them."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, logins_: list | None, allow_public_without_auth: bool, tls: bool) -> None:
    """Refuse to listen beyond this machine without a login, unless told to; warn about passwords sent in
    clear text.

    Raises:
        InvalidInputError: ``host`` is not loopback, there is no login and ``allow_public_without_auth`` is off.
    """
    if is_loopback(host):
        return
    if not logins_:
        if not allow_public_without_auth:
            raise InvalidInputError(
                f"--host {host}: the page shows patient images to anyone who reaches it; give it a login "
                f"(--auth-file PATH or {AUTH_ENV}=user:password) or say {PUBLIC_FLAG}")
        logger.warning("listening on %s without a login (%s): anyone who reaches this address can use the page",
                       host, PUBLIC_FLAG)
    elif not tls:
        logger.warning("listening on %s over plain HTTP: logins and images cross the network unencrypted "
                       "(--ssl-certfile / --ssl-keyfile)", host)


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both TLS files or neither, each a readable regular file.

    Raises:
        InvalidInputError: one without the other, or a file that cannot be read.
    """
    if bool(certfile) != bool(keyfile):
        raise InvalidInputError("--ssl-certfile and --ssl-keyfile go together (a certificate and its key)")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise InvalidInputError(f"{flag} {path}: not a readable file")
