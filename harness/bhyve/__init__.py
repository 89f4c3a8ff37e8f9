"""bhyve backend: dirty-page traces from /dev/vmm and measured UPB-patch migrations on FreeBSD hosts.

Entry points for the shared CLI verbs (``--hypervisor bhyve``)::

    from harness.bhyve import add_collect_arguments, collect_main      # miglab trace collect
    from harness.bhyve import add_migrate_arguments, migrate_main      # miglab migrate

Importing this package is cheap: the collector (``harness.bhyve.collect``)
needs only the standard library and numpy, so it runs on a FreeBSD host with
``pkg install python311 py311-numpy``. See ``docs/bhyve.md``.
"""

from __future__ import annotations

import logging

from .cli import add_collect_arguments, add_migrate_arguments, collect_main, migrate_main

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["add_collect_arguments", "add_migrate_arguments", "collect_main", "migrate_main"]
