"""``miglab harness build-guest``: build the QEMU guest (kernel + initramfs) into the cache."""

from __future__ import annotations

import argparse

from harness.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    p.add_argument("--cache", metavar=options.DIR, help="cache root (default $MIGLAB_CACHE or ~/.cache/miglab)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.guest import build_guest

    cache = Path(args.cache) if args.cache else None
    img = build_guest(cache, force=args.force)
    m = img.manifest
    print(f"guest {img.key}: kernel {img.kernel_version} ({img.kernel}, {m['vmlinux_bytes'] >> 20} MiB), "
          f"initramfs {img.initrd} ({m['initramfs_bytes'] >> 20} MiB), redis {m.get('redis_version')}")
    return 0
