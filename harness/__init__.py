"""miglab's harness: real guests, real traces, real migrations (QEMU on Linux, bhyve on FreeBSD)."""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
