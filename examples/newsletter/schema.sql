-- The newsletter example's own tables. pgjobs keeps its tables in schema "pgjobs"
-- (`pgjobs migrate`); these are the application's, and migrate() in newsletter.py
-- applies this file on every start (every statement is idempotent).

CREATE TABLE IF NOT EXISTS subscribers (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS newsletters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject     text NOT NULL,
    body        text NOT NULL,
    send_at     timestamptz NOT NULL DEFAULT now(),
    -- scheduled -> sending (the import job) -> sent (the batch's on_success);
    -- needs_attention (the batch's on_death: a delivery used up its attempts)
    status      text NOT NULL DEFAULT 'scheduled'
                CHECK (status IN ('scheduled', 'sending', 'sent', 'needs_attention')),
    batch_id    bigint,       -- pgjobs.batches.id of its deliveries, set by the import
    recipients  integer,      -- subscribers when the import ran
    started_at  timestamptz,
    sent_at     timestamptz
);

-- The import picks due newsletters with this index.
CREATE INDEX IF NOT EXISTS newsletters_due_idx ON newsletters (send_at)
    WHERE status = 'scheduled';

-- One row per message handed to the sender, written in the delivery job's completing
-- transaction. There is deliberately no UNIQUE (newsletter_id, subscriber_id): the demo
-- counts duplicates to show that the jobs alone prevent them. In your application add
-- one as a second line of defence.
CREATE TABLE IF NOT EXISTS deliveries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    newsletter_id  bigint NOT NULL REFERENCES newsletters,
    subscriber_id  bigint NOT NULL REFERENCES subscribers,
    job_id         bigint NOT NULL,  -- the pgjobs job that delivered it
    delivered_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS deliveries_newsletter_idx
    ON deliveries (newsletter_id, subscriber_id);

-- The local mail sink (sink.py): what an email provider would hold, one row per
-- message it accepted. A second send with the same idempotency key is not delivered
-- again; it only counts in `sends`.
CREATE SCHEMA IF NOT EXISTS mailsink;

CREATE TABLE IF NOT EXISTS mailsink.messages (
    idempotency_key  text PRIMARY KEY,
    recipient        text NOT NULL,
    subject          text NOT NULL,
    body             text NOT NULL,
    tag              text,            -- the sender's label: the newsletter id
    sends            integer NOT NULL DEFAULT 1,
    accepted_at      timestamptz NOT NULL DEFAULT now()
);
