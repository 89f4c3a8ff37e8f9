"""bhyve backend: dirty-page traces from /dev/vmm and measured UPB-patch migrations on FreeBSD hosts.

The shared CLI verbs reach it with ``--hypervisor bhyve`` (``miglab trace
collect``, ``miglab migrate``); their bhyve flags live in
:mod:`harness.cli.bhyve_options`, and ``python -m harness.bhyve`` runs the two
verbs on a host with no more than numpy.

Importing this package is cheap: the collector (``harness.bhyve.collect``)
needs only the standard library and numpy, so it runs on a FreeBSD host with
``pkg install python311 py311-numpy``. See ``docs/bhyve.md``.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
