"""SQL: batches. Their counters are kept by the jobs trigger (so hand-written SQL on
``jobs`` counts too), which appends to ``batch_deltas``; ``batch_fold`` folds the deltas
into the ``batches`` row and fires the events they make due (revision 0007)."""

from __future__ import annotations

# A new batch; a child also counts itself into its parent, whose callbacks then wait for it.
# FOR SHARE on the parent, until this transaction ends, keeps a fold from firing the
# parent's success meanwhile (it is the lock batch_add_jobs takes, too).
batch_insert = """
WITH parent AS (
    SELECT id FROM {schema}.batches
    WHERE id = %(parent_id)s::bigint AND succeeded_at IS NULL
    FOR SHARE
),
counted AS (
    INSERT INTO {schema}.batch_deltas (batch_id, children_pending, children_incomplete)
    SELECT id, 1, 1 FROM parent
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

# Exact counters: batch_progress adds the deltas not yet folded to the row's.
batch_get = """
SELECT id, parent_id, description, state, total, pending, succeeded, failed, dead,
       children_pending, children_incomplete, created_at, completed_at, succeeded_at, died_at
FROM {schema}.batch_progress WHERE id = %(id)s
"""

# Folds the deltas of these batches (and of the parents their events touch) and fires
# what is due; returns the ids it skipped because another transaction holds their row.
batch_fold = """
SELECT {schema}.batch_fold(%(ids)s::bigint[]) AS skipped
"""

# Batches with deltas not yet folded (the sweep that catches hand-written SQL, expiries,
# reclaims and workers lost between a commit and its fold).
batch_unfolded = """
SELECT batch_id FROM {schema}.batch_deltas GROUP BY batch_id ORDER BY batch_id
LIMIT %(limit)s
"""
