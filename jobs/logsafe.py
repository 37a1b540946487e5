"""The console shows the job's lines, at any level, and never a credential.

`--log-level debug` is for the job's own debug lines. The storage clients' loggers (botocore, s3fs, urllib3,
aiohttp...) log every request at DEBUG, headers included: thousands of lines per run, and the access key id in
every signed request. They stay at WARNING unless `-v` asks for everything.

Whatever reaches a handler of the job's console passes `Redact` first: the values of the AWS credential variables
and of the `--storage-option` keys that are credentials, access key ids, and signatures, credentials and session
tokens inside signed headers or URLs are replaced by `***`.
"""

from __future__ import annotations

import logging
import os
import re

# The storage clients' loggers: their DEBUG lines are wire logs (requests, headers, bodies).
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore", "s3fs", "fsspec", "aiohttp",
                "asyncio", "huggingface_hub", "filelock")
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_CREDENTIAL_OPTIONS = ("key", "secret", "token", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_PATTERNS = [
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{12,}"), "***"),                            # access key ids
    (re.compile(r"(Credential=)[^,\s&'\"]+", re.I), r"\1***"),                       # SigV4 header / query
    (re.compile(r"(Signature=)[0-9a-f]+", re.I), r"\1***"),
    (re.compile(r"(X-Amz-Security-Token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,&}]+", re.I), r"\1***"),
    (re.compile(r"(Authorization['\"]?\s*:\s*b?['\"])[^'\"]+", re.I), r"\1***"),
]


class Redact(logging.Filter):
    """Replaces credentials in a record's text (see the module docstring); `secrets`: more values to hide."""

    def __init__(self, secrets=()):
        super().__init__()
        self.secrets = {s for s in secrets if s and len(s) >= 6}

    def add(self, *values: str) -> None:
        self.secrets |= {v for v in values if v and len(v) >= 6}

    def hide(self, text: str) -> str:
        for value in sorted(self.secrets | _from_environment(), key=len, reverse=True):
            text = text.replace(value, "***")
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        safe = self.hide(text)
        if safe != text:
            record.msg, record.args = safe, ()
        if record.exc_text:
            record.exc_text = self.hide(record.exc_text)
        return True


def _from_environment() -> set:
    return {v for v in (os.environ.get(k) for k in _CREDENTIAL_VARIABLES) if v and len(v) >= 6}


REDACT = Redact()


def storage_secrets(storage_options) -> list[str]:
    """The values of `--storage-option KEY=VALUE` entries whose key names a credential."""
    out = []
    for item in storage_options or ():
        key, _, value = str(item).partition("=")
        if key.strip().lower() in _CREDENTIAL_OPTIONS:
            out.append(value.strip())
    return out


def console_logging(level: str, verbose: bool) -> None:
    """The command line's logging: the job's lines at `level` on stderr, wire logs only with `verbose`, and
    every console handler redacting credentials."""
    from .config import LOG_FORMAT

    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=LOG_FORMAT)
    if not verbose:
        for name in WIRE_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    for handler in logging.getLogger().handlers:
        if REDACT not in handler.filters:
            handler.addFilter(REDACT)
