"""A Ctrl-C that lands inside the driver's write transaction: the write completes, then the
driver stops with KeyboardInterrupt (the CLI's clean 'interrupted' exit), never DuckDB's
'Query interrupted' error with the unit's write rolled back."""

import os
import signal
import threading

import duckdb
import pytest

from ckptlab.interrupts import sigint_after_block
from ckptlab.results import ResultStore

# Long enough (2 s on 2 idle cores) that a signal sent 0.2 s in arrives while DuckDB runs it.
SLOW_QUERY = "SELECT count(*) FROM range(400000000) a WHERE hash(a.range) % 7 = 0"


def ctrl_c_in(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_without_the_deferral_duckdb_aborts_the_query(tmp_path):
    """Why the deferral exists: a SIGINT while DuckDB runs a query aborts the query with
    a RuntimeError, not a KeyboardInterrupt (what CI's Ctrl-C test once met in a write)."""
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    ctrl_c_in(0.2).join(0)
    with pytest.raises(RuntimeError, match="Query interrupted"):  # DuckDB 2.0's words
        con.execute(SLOW_QUERY).fetchall()
    con.close()


def test_a_ctrl_c_inside_a_write_lets_it_commit_then_stops(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    with store.transaction() as con:
        con.execute("CREATE TABLE t (x BIGINT)")
    with pytest.raises(KeyboardInterrupt), store.transaction() as con:
        timer = ctrl_c_in(0.2)
        con.execute(f"INSERT INTO t {SLOW_QUERY}")
        timer.join()
        con.execute("INSERT INTO t VALUES (3)")
    with store.transaction() as con:
        (expected,) = con.execute(SLOW_QUERY).fetchone()
        assert con.execute("SELECT x FROM t ORDER BY x").fetchall() == [(3,), (expected,)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_many_signals_are_one_interrupt_and_none_is_nothing():
    with pytest.raises(KeyboardInterrupt), sigint_after_block():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    with sigint_after_block():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_ckptlab_query_is_a_clean_stop(tmp_path):
    from typer.testing import CliRunner

    from ckptlab.cli import app

    db = tmp_path / "r.duckdb"
    with ResultStore(db).transaction() as con:
        con.execute("CREATE TABLE t (x BIGINT)")
    timer = ctrl_c_in(0.5)
    result = CliRunner().invoke(app, ["query", SLOW_QUERY, "--db", str(db)])
    timer.join()
    assert result.exit_code == 130, result.output
    assert "error: interrupted" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
