"""SQL: batches (the counters and callbacks themselves are kept by the triggers of
revisions 0002 and 0005, so hand-written SQL on ``jobs`` counts too)."""

from __future__ import annotations

# A new batch; a child also counts itself into its parent, whose callbacks then wait for it.
batch_insert = """
WITH parent AS (
    UPDATE {schema}.batches
    SET children_pending = children_pending + 1,
        children_incomplete = children_incomplete + 1
    WHERE id = %(parent_id)s::bigint AND succeeded_at IS NULL
    RETURNING id
)
INSERT INTO {schema}.batches (parent_id, description, meta)
SELECT %(parent_id)s::bigint, %(description)s, %(meta)s::jsonb
WHERE %(parent_id)s::bigint IS NULL OR EXISTS (SELECT FROM parent)
RETURNING id
"""

# Callbacks are appended as JSON rows; batch_fire() reads them when the event is due.
# A callback for an event that has already fired is refused, not silently kept.
batch_add_callback = """
UPDATE {schema}.batches SET callbacks = callbacks || jsonb_build_array(%(callback)s::jsonb)
WHERE id = %(id)s
  AND CASE %(event)s WHEN 'complete' THEN completed_at IS NULL
                     WHEN 'success' THEN succeeded_at IS NULL
                     ELSE died_at IS NULL END
RETURNING id
"""

batch_get = """
SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
       children_pending, children_incomplete, created_at, completed_at, succeeded_at, died_at
FROM {schema}.batches WHERE id = %(id)s
"""
