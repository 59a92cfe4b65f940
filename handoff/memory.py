"""The garbage collector of a long-running server process: rarer, shorter pauses.

CPython's cyclic collector holds the interpreter while it runs, so every socket of a web
process waits for it. With Python's thresholds (700, 10, 10), a web process serving 550
sockets under load (bench/README.md, tenth round) ran a full collection twice a minute,
walking some 260,000 objects for 230-340 ms each time, and the middle generation every
two seconds for 5-30 ms. Two changes:

- What exists once the process has started (modules, classes, the settings, Django's and
  the libraries' set-up: about 120,000 objects) lives as long as the process. It is
  frozen (`gc.freeze()`), so collections no longer walk it, and a full collection walks
  only what the process made since.
- The youngest generation is collected after `GC_THRESHOLDS[0]` more objects were made than
  freed instead of 700. Most of a request's or a message's objects are freed by their
  reference counts long before that, so far fewer survive into the older generations,
  whose collections become rare: under the same load, a quarter of the collector's time,
  and no full collection in a 50-second run.

Cyclic garbage waits a little longer for its collection: at most the threshold's objects.
"""

from __future__ import annotations

import gc

from django.conf import settings


def settle_collector() -> None:
    """Freeze what start-up made and apply `HANDOFF_GC_THRESHOLDS`; call once started.

    Nothing changes when the setting is empty (the test suite keeps Python's collector).
    """
    thresholds = settings.HANDOFF_GC_THRESHOLDS
    if not thresholds:
        return
    gc.collect()  # start-up's own garbage is not frozen with what stays
    gc.freeze()
    gc.set_threshold(*thresholds)
