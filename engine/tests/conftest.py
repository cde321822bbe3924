"""Make ``powernap`` importable from the engine directory, whatever the working directory."""

import os
import sys

ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ENGINE_DIR not in sys.path:
    sys.path.insert(0, ENGINE_DIR)


# -- stores: every store test runs on SQLite and on a private PostgreSQL cluster (pg_cluster.py) ---------
import itertools  # noqa: E402

import pytest  # noqa: E402

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgresql():
    """A private PostgreSQL cluster for the session (unix socket only), stopped by its PID afterwards."""
    import pg_cluster

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed (requirements/dev.txt pins it; the engine needs only the stdlib)")
    bindir = pg_cluster.binaries()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (tools/system-packages.txt: postgresql)")
    cluster = pg_cluster.PrivateCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh store location: a SQLite file, or a new database in the private cluster."""
    if request.param == "sqlite":
        return "sqlite://%s" % (tmp_path / "state" / "registry.sqlite3")
    cluster = request.getfixturevalue("postgresql")
    return cluster.create_database("test%d_%d" % (os.getpid(), next(_databases)))
