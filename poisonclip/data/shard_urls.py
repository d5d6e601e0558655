"""Where shards are: img2dataset's shard names and the brace patterns that list them.

Keys are the shard number (5 digits) followed by the index inside the shard, so they are unique
over a shard set. URLs are brace patterns (``shards/{00000..00331}.tar``); several sources are
joined with ``::``, as open_clip_train accepts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from poisonclip.errors import UsageError

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")  # what open_clip_train reads
SHARD_DIGITS = 5  # img2dataset's shard names: 00000.tar


def is_shard_url(data: str) -> bool:
    """True for webdataset URLs (``dir/{00000..00009}.tar``, ``a.tar::b.tar``), False for CSV files."""
    return data.endswith(".tar")


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard paths from brace patterns joined with ``::`` (or a list of them), in order.

    Raises ``UsageError`` when no shard of the pattern exists (a mistyped URL); a single missing
    shard among existing ones is a fault reported by the readers instead.
    """
    import webdataset as wds  # heavy; telling a shard URL from a CSV file needs none of it

    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for pattern in patterns for url in wds.shardlists.expand_urls(pattern)]
    if not any(Path(url).is_file() for url in expanded):
        raise UsageError(
            f"no shard found for {' '.join(patterns)!r} (expected e.g. 'dir/{{00000..00009}}.tar')"
        )
    return expanded


def brace_url(directory: str | Path, num_shards: int) -> str:
    """The brace pattern over ``num_shards`` shards named 00000.tar, 00001.tar ... in ``directory``."""
    last = f"{num_shards - 1:0{SHARD_DIGITS}d}"
    return f"{directory}/{{{0:0{SHARD_DIGITS}d}..{last}}}.tar"


def shard_ranges(urls: Sequence[str]) -> list[str]:
    """``urls`` (shard paths, in order) as few brace patterns: runs of consecutive shard numbers in
    one folder become ``dir/{00003..00007}.tar``; any other path stays as it is."""
    out: list[str] = []
    run: list[tuple[str, int, int]] = []  # (folder, first, last) of the current run

    def close() -> None:
        if run:
            folder, first, last = run.pop()
            name = f"{first:0{SHARD_DIGITS}d}"
            span = name if first == last else f"{{{name}..{last:0{SHARD_DIGITS}d}}}"
            out.append(f"{folder}/{span}.tar" if folder else f"{span}.tar")

    for url in urls:
        folder, _, name = url.rpartition("/")
        stem = name.removesuffix(".tar")
        if not (name.endswith(".tar") and stem.isdigit() and len(stem) == SHARD_DIGITS):
            close()
            out.append(url)
            continue
        number = int(stem)
        if run and run[0][0] == folder and run[0][2] == number - 1:
            run[0] = (folder, run[0][1], number)
        else:
            close()
            run.append((folder, number, number))
    close()
    return out
