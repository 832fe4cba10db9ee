"""Where splits live: local directories and object-store URLs, named the same way."""

from __future__ import annotations

import os
import tempfile
import threading
import urllib.parse
from typing import Any, Callable, Iterable, Optional

__all__ = [
    'is_remote', 'split_location', 'remote_scheme_problem', 'remote_split_problems', 'fetch_remote_file', 'remote_file_exists',
    'upload_file', 'delete_remote_prefix',
]


def is_remote(path: Optional[str]) -> bool:
    """Whether ``path`` names an object store (s3://, gs://, ...) rather than a local directory."""
    return path is not None and '://' in path and not path.startswith('file://')


def split_location(root: Optional[str], split: str) -> Optional[str]:
    """``root/split`` for local paths and URLs alike (None stays None)."""
    if root is None:
        return None
    return root.rstrip('/') + '/' + split


def _s3_index(url: str, timeout: float) -> None:
    """HEAD the object with short timeouts and one retry (streaming's client may wait 60 s per try, 3 tries)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import NoCredentialsError

    parsed = urllib.parse.urlparse(url)
    endpoint = os.environ.get('S3_ENDPOINT_URL')  # what streaming's S3 downloader uses
    # Requester-pays buckets refuse requests that do not say so; streaming reads the same variable.
    payers = {b.strip() for b in os.environ.get('MOSAICML_STREAMING_AWS_REQUESTER_PAYS', '').split(',')}
    payer = {'RequestPayer': 'requester'} if parsed.netloc in payers else {}

    def head(**extra: Any) -> None:
        # Two tries of half the budget each, so the answer comes within about `timeout` seconds.
        config = Config(connect_timeout=timeout / 2, read_timeout=timeout / 2, retries={'total_max_attempts': 2, 'mode': 'standard'}, **extra)
        client = boto3.session.Session().client('s3', endpoint_url=endpoint, config=config)
        client.head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip('/'), **payer)

    try:
        head()
    except NoCredentialsError:
        head(signature_version=UNSIGNED)  # public buckets, as streaming does


def _streaming_index(url: str, timeout: float) -> None:
    """Fetch the index with streaming's own downloader (gs://, oci://, hf://, ...)."""
    from streaming.base.storage.download import CloudDownloader

    with tempfile.TemporaryDirectory() as tmp:
        CloudDownloader.direct_download(url, os.path.join(tmp, 'index.json'), timeout)


def _explain(url: str, error: BaseException) -> tuple[str, bool]:
    """What to check for a failed fetch, and whether it concerns this object only (not the store)."""
    text = f'{type(error).__name__}: {error}'
    code = ''
    response = getattr(error, 'response', None)
    if isinstance(response, dict):
        code = str(response.get('Error', {}).get('Code', ''))
    lowered = text.lower()
    if code in ('404', 'NoSuchKey', 'NotFound') or isinstance(error, FileNotFoundError) or (not code and 'not found' in lowered):
        from t5composer.data.span_spec import convert_command

        root, split = url.rsplit('/', 2)[:2]  # url is root/split/index.json
        command = convert_command(out_root=root, splits=split if split in ('train', 'val') else '<train|val>', tokenizer='<tokenizer.name>')
        return (f'{url} does not exist ({text}). Convert the split into the store ({command}), upload split folders '
                'converted elsewhere under data.remote, or fix data.remote / the split names.'), True
    if code == 'NoSuchBucket':
        return f'the bucket of {url} does not exist ({text}); fix data.remote.', False
    if code in ('403', 'AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken') or 'credential' in lowered:
        return (f'access to {url} was refused ({text}). Check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY '
                'or AWS_PROFILE for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://) and the bucket permissions.'), False
    return (f'{url} cannot be reached ({text}). Check the network, the endpoint (S3_ENDPOINT_URL for s3:// '
            'stores that are not AWS) and the credentials, or set data.remote: null and data.local to a local copy.'), False


def remote_scheme_problem(remote: str) -> Optional[str]:
    """Why streaming cannot read ``remote``'s URL scheme at all, or None."""
    scheme = urllib.parse.urlparse(remote).scheme
    if scheme == 's3':
        return None
    from streaming.base.storage.download import DOWNLOADER_MAPPINGS  # ~2 s to import; only for other schemes

    if scheme in DOWNLOADER_MAPPINGS:
        return None
    supported = ', '.join(f'{s}://' for s in sorted(DOWNLOADER_MAPPINGS) if s)
    return f"data.remote '{remote}' has the scheme '{scheme}://', which streaming cannot read; use one of {supported}."


def _fetch_problem(remote: str, split: str, timeout: float) -> Optional[tuple[str, bool]]:
    url = split_location(remote, split) + '/index.json'
    fetch: Callable[[str, float], None] = _s3_index if urllib.parse.urlparse(remote).scheme == 's3' else _streaming_index
    outcome: list[Optional[BaseException]] = []

    def run() -> None:
        try:
            fetch(url, timeout)
            outcome.append(None)
        except BaseException as e:  # reported to the caller's thread, never raised here
            outcome.append(e)

    # A daemon thread: a store that never answers cannot hold the run (or its exit) hostage.
    worker = threading.Thread(target=run, name='t5composer-remote-check', daemon=True)
    worker.start()
    worker.join(timeout + 5.0)
    if not outcome:
        return (f'{url} did not answer within {timeout:g} s. Check the network, the endpoint (S3_ENDPOINT_URL for s3:// '
                'stores that are not AWS) and the credentials; raise data.download_timeout if the store is slow.'), False
    return None if outcome[0] is None else _explain(url, outcome[0])


def remote_split_problems(remote: str, splits: list[str], *, timeout: float = 30.0, cached: Iterable[str] = ()) -> list[str]:
    """Why the splits' ``index.json`` files under ``remote`` cannot be fetched (empty if they can).

    Each fetch is bounded by about ``timeout`` seconds of wall time whatever the store does (a
    silent endpoint, retries), unlike a dataset build, which can wait minutes before failing; a
    store that cannot be reached at all is reported once, without waiting for every split.

    Args:
        remote: ``data.remote`` (s3://, gs://, oci://, hf://, ...).
        splits: split names under it.
        timeout: seconds one split's check may take.
        cached: splits already in the local cache, which train without the store: only the
            scheme is checked for them.
    """
    scheme = remote_scheme_problem(remote)
    if scheme is not None:
        return [scheme]
    problems = []
    for split in splits:
        if split in set(cached):
            continue
        found = _fetch_problem(remote, split, timeout)
        if found is not None:
            message, this_object_only = found
            problems.append(f'data.remote: {message}')
            if not this_object_only:
                break  # the same store would fail the same way for the other splits
    return problems


def fetch_remote_file(url: str, dest: str, *, timeout: float = 60.0) -> None:
    """Download one object (s3://, gs://, ...) to ``dest`` with streaming's downloader.

    The same code path as training's shards (S3_ENDPOINT_URL, credentials from the environment).

    Raises:
        FileNotFoundError: the object does not exist.
    """
    from streaming.base.storage.download import CloudDownloader

    try:
        CloudDownloader.direct_download(url, dest, timeout)
    except Exception as e:
        if _not_found(e) and not isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f'{url} does not exist ({e})') from e
        raise


def remote_file_exists(url: str, *, timeout: float = 60.0) -> bool:
    """Whether the object at ``url`` exists (other errors, e.g. refused credentials, propagate)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fetch_remote_file(url, os.path.join(tmp, 'object'), timeout=timeout)
        except FileNotFoundError:
            return False
        except Exception as e:
            if _not_found(e):
                return False
            raise
    return True


def _not_found(error: BaseException) -> bool:
    """A missing object, whichever way the downloader says it (streaming's S3 path raises botocore's 404)."""
    response = getattr(error, 'response', None)
    code = str(response.get('Error', {}).get('Code', '')) if isinstance(response, dict) else ''
    return isinstance(error, FileNotFoundError) or code in ('404', 'NoSuchKey', 'NotFound')


def upload_file(local_dir: str, remote_dir: str, filename: str) -> None:
    """Upload ``local_dir/filename`` to ``remote_dir/filename`` with streaming's uploader."""
    import logging

    from streaming.base.storage import CloudUploader

    # The uploader warns that local_dir is not empty, which is the point here.
    upload_log = logging.getLogger('streaming.base.storage.upload')
    level = upload_log.level
    upload_log.setLevel(logging.ERROR)
    try:
        uploader = CloudUploader.get(out=(local_dir, remote_dir), keep_local=True, exist_ok=True)
    finally:
        upload_log.setLevel(level)
    uploader.upload_file(filename)


def delete_remote_prefix(remote_dir: str) -> int:
    """Delete every object under ``remote_dir`` (s3:// only); returns how many were deleted."""
    parsed = urllib.parse.urlparse(remote_dir)
    if parsed.scheme != 's3':
        raise ValueError(f'Replacing {remote_dir} needs deleting it first, which t5composer does for s3:// only; '
                         'delete it with your storage tools, then convert again.')
    import boto3

    client = boto3.session.Session().client('s3', endpoint_url=os.environ.get('S3_ENDPOINT_URL'))
    prefix = parsed.path.lstrip('/').rstrip('/') + '/'
    deleted = 0
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=parsed.netloc, Prefix=prefix):
        keys = [{'Key': o['Key']} for o in page.get('Contents', [])]
        if keys:
            client.delete_objects(Bucket=parsed.netloc, Delete={'Objects': keys})
            deleted += len(keys)
    return deleted
