import psycopg

import pgjobs


def test_enqueue_visible_after_commit(fresh_dsn: str) -> None:
    app = pgjobs.App(dsn=fresh_dsn)

    @app.job(name="t")
    def t(x: int) -> None: ...

    with psycopg.connect(fresh_dsn) as c:
        r = t.enqueue(c, x=1)
    with psycopg.connect(fresh_dsn) as c:
        row = c.execute("select task, args from pgjobs.jobs where id=%s", (r.id,)).fetchone()
        assert row == ("t", {"x": 1})
