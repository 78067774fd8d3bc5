"""The event of the slow worker app, apart from its bus: importing it builds no bus.

(A live bus with a durable handler switches causation tracking on for every bus in the
process, which other tests measure.)
"""

from __future__ import annotations

from eventbus import EventRegistry, event

REGISTRY = EventRegistry()


@event("slow.report_requested", registry=REGISTRY)
class ReportRequested:
    report_id: str
