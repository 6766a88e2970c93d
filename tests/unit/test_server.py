"""Process-level settings a worker applies at start-up."""

from __future__ import annotations

import gc

from fastdns import server


def test_start_up_objects_are_frozen_out_of_the_garbage_collector() -> None:
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        server._settle_garbage_collector()
        assert gc.get_freeze_count() > 0  # what exists now is never walked again
        assert gc.get_threshold() == (server.GC_GEN0_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
