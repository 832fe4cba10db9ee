"""Secrets never reach the console, a log or a file: one place that knows what a secret is and hides it.

Secret values are those of config keys named like secrets (``api_key``, ``hf_token``, ``password``,
... as whole words, so ``tokenizer`` is not one), passwords inside URLs, and the values of
environment variables named like secrets (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``, ...). Printed
configs are :func:`redact`-ed, every log record is filtered (:func:`install_scrubbing`), and a
traceback that reaches the console goes through the same :func:`scrub` (a value interpolated from
``${oc.env:...}`` into a path would otherwise show in it). Imports nothing from the project.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from typing import Any, Sequence

__all__ = ['config_secrets', 'install_scrubbing', 'is_secret', 'print_error', 'redact', 'scrub', 'scrub_this_process',
           'secret_values']

_SECRET_WORDS = {'key', 'token', 'secret', 'password', 'passwd', 'credential', 'credentials', 'apikey'}


def is_secret(key: Any) -> bool:
    # Whole words only: 'api_key' and 'hf_token' are secrets, 'tokenizer' is not.
    return isinstance(key, str) and any(w in _SECRET_WORDS for w in re.split(r'[_\-.]', key.lower()))


_URL_PASSWORD = re.compile(r'(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)(?P<pw>[^/\s@]+)@')
_SECRET_ENV_WORDS = _SECRET_WORDS | {'pat', 'auth'}


def secret_values(environ: Any = None) -> list[str]:
    """Values of environment variables whose names look secret (AWS_SECRET_ACCESS_KEY, HF_TOKEN,
    WANDB_API_KEY, ...), longest first, to scrub from anything printed or logged."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items()
              if len(v) >= 6 and any(w in _SECRET_ENV_WORDS for w in re.split(r'[_\-.]', k.lower()))}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with URL passwords and the given secret values replaced by '****'."""
    text = _URL_PASSWORD.sub(lambda m: m['head'] + '****@', text)
    for value in secrets:
        text = text.replace(value, '****')
    return text


def print_error(message: object, secrets: Sequence[str] | None = None) -> None:
    """Print ``error: <message>`` to stderr, scrubbed (the one form every entry point reports a fixable error in)."""
    secrets = secret_values() if secrets is None else secrets
    print(f'error: {scrub(str(message), secrets)}', file=sys.stderr, flush=True)


def redact(obj: Any, secrets: Sequence[str] | None = None) -> Any:
    """A copy of a config mapping without secrets: values of secret-looking keys become '****',
    and passwords in URLs and values of secret environment variables are scrubbed from strings."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {
            k: ('****' if is_secret(k) and v is not None else redact(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return scrub(obj, secrets)
    return obj


def config_secrets(obj: Any) -> list[str]:
    """Values of secret-looking keys anywhere in a config mapping (to scrub them wherever they reappear)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if is_secret(key) and isinstance(value, str) and len(value) >= 4:
                found.append(value)
            else:
                found += config_secrets(value)
    elif isinstance(obj, list):
        for value in obj:
            found += config_secrets(value)
    return found


class _ScrubSecrets(logging.Filter):
    """Replace secret values in log records, whichever library emits them."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            # The formatter would print the traceback as is; put the scrubbed text in its place.
            record.exc_text = scrub(''.join(traceback.format_exception(*record.exc_info)), self.secrets).rstrip('\n')
            record.exc_info = None
        return True


def install_scrubbing(secrets: Sequence[str]) -> None:
    """Scrub ``secrets`` (and URL passwords) from log handlers, uncaught tracebacks and warnings.

    Idempotent: a later call replaces the secrets (the config's are known only once it is loaded).
    """
    secrets = sorted(set(secrets), key=len, reverse=True)
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, _ScrubSecrets)]:
            handler.removeFilter(f)
        handler.addFilter(_ScrubSecrets(secrets))

    def excepthook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        sys.stderr.write(scrub(''.join(traceback.format_exception(exc_type, exc, tb)), secrets))
        sys.stderr.flush()

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else '?'
        sys.stderr.write(f'Exception in thread {name}:\n')
        excepthook(args.exc_type, args.exc_value, args.exc_traceback)  # type: ignore[arg-type]

    # torch.distributed later wraps sys.excepthook to prefix '[rank0]:'; it calls this one inside.
    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    logging.captureWarnings(True)  # warnings (paths in them) go through the filtered handlers


def scrub_this_process() -> list[str]:
    """Scrub the environment's secrets from this process's output (each script calls it first); returns them."""
    secrets = secret_values()
    install_scrubbing(secrets)
    return secrets
