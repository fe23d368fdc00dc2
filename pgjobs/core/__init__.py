"""The leaf layer: values, rules and errors that every other layer shares.

Nothing here touches a database or imports another part of pgjobs: error types, name and
option validation, args encoding, the handler's control exceptions, per-key limits, the
cron arithmetic of schedules, and the plain values that cross layers (``Enqueued``,
``ClaimedJob``, ``Outcome``, ...).
"""
