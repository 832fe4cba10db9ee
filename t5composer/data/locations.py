"""Where splits live: local directories and object-store URLs, named the same way."""

from __future__ import annotations

from typing import Optional

__all__ = ['is_remote', 'split_location']


def is_remote(path: Optional[str]) -> bool:
    """Whether ``path`` names an object store (s3://, gs://, ...) rather than a local directory."""
    return path is not None and '://' in path and not path.startswith('file://')


def split_location(root: Optional[str], split: str) -> Optional[str]:
    """``root/split`` for local paths and URLs alike (None stays None)."""
    if root is None:
        return None
    return root.rstrip('/') + '/' + split
