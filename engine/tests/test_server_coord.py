"""Several powerwaked instances on one PostgreSQL (issue 18, part 2): the job table and the segment leader,
against the private cluster (``pg_cluster``): the building blocks of fleet mode (tests/test_server_fleet.py)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from powernap.server.store.coord import JobListener, JobQueue, SegmentLeader

ENGINE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def database(postgresql, request):
    return postgresql.create_database("coord_%d_%s" % (os.getpid(), request.node.name[5:40].lower()))


def _connect(url, autocommit=False):
    import psycopg

    return psycopg.connect(url, autocommit=autocommit)


def _queue(url, instance):
    queue = JobQueue(_connect(url), instance)
    queue.create_schema()
    return queue


def test_each_job_goes_to_exactly_one_instance_of_its_segment(database):
    submitter = _queue(database, "a0")
    ids = {submitter.submit("a", "wol", {"mac": "52:54:00:00:00:%02x" % i}) for i in range(60)}
    other = submitter.submit("b", "wol", {"mac": "52:54:00:00:01:01"})
    taken = {}
    lock = threading.Lock()

    def worker(instance):
        queue = _queue(database, instance)
        try:
            while True:
                job = queue.claim("a", lease=30)
                if job is None:
                    return
                with lock:
                    taken.setdefault(job["id"], []).append(instance)
                assert queue.done(job["id"], {"sent": True})
        finally:
            queue.conn.close()

    threads = [threading.Thread(target=worker, args=("a%d" % n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(taken) == ids and all(len(who) == 1 for who in taken.values())  # SKIP LOCKED: no job twice
    assert submitter.job(other)["state"] == "queued"  # segment B's job is not A's to do
    submitter.conn.close()


def test_a_job_of_a_lost_instance_is_done_by_another_on_the_segment(database):
    lost = _queue(database, "a1")
    job_id = lost.submit("a", "wol", {"mac": "52:54:00:00:00:01"})
    job = lost.claim("a", lease=0.5)
    assert job["id"] == job_id and job["attempts"] == 1
    lost.conn.close()  # the instance dies holding the job
    survivor = _queue(database, "a2")
    assert survivor.claim("a", lease=30) is None  # its lease still runs
    time.sleep(0.7)
    retried = survivor.claim("a", lease=30)
    assert retried["id"] == job_id and retried["attempts"] == 2
    late = JobQueue(_connect(database), "a1")
    assert not late.done(job_id)  # the lost instance, back, cannot finish what went elsewhere
    assert survivor.done(job_id) and survivor.job(job_id)["state"] == "done"
    late.conn.close()
    survivor.conn.close()


def test_a_job_that_keeps_failing_ends_failed_after_max_attempts(database):
    queue = _queue(database, "a1")
    job_id = queue.submit("a", "ipmi", {"bmc": "192.0.2.9"}, max_attempts=2)
    assert queue.fail(queue.claim("a", lease=30)["id"], "bmc timeout")
    assert queue.job(job_id)["state"] == "queued"
    queue.claim("a", lease=0.2)
    time.sleep(0.4)
    assert queue.claim("a", lease=30) is None  # attempts used up
    assert queue.reap() == 1 and queue.job(job_id)["state"] == "failed"
    queue.conn.close()


def test_notify_wakes_the_instances_of_the_segment_only(database):
    queue = _queue(database, "a0")
    listener = JobListener(_connect(database, autocommit=True), ["a"])
    assert not listener.wait(0.2)
    queue.submit("b", "wol", {})
    assert not listener.wait(0.3)  # another segment's job does not wake us
    timer = threading.Timer(0.3, queue.submit, args=("a", "wol", {}))
    started = time.monotonic()
    timer.start()
    assert listener.wait(5.0)
    assert time.monotonic() - started < 1.5  # woken by NOTIFY, not by the timeout
    timer.join()
    listener.conn.close()
    queue.conn.close()


HOLDER = """
import sys, time, psycopg
sys.path.insert(0, %r)
from powernap.server.store.coord import SegmentLeader
leader = SegmentLeader(psycopg.connect(%r, autocommit=True), "a")
assert leader.try_lead()
print("leading", flush=True)
time.sleep(60)
"""


def test_the_segment_leader_is_taken_over_within_the_bound_when_it_dies(database):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER % (ENGINE, database)], stdout=subprocess.PIPE, text=True, cwd=ENGINE
    )
    try:
        assert holder.stdout.readline().strip() == "leading"
        follower = SegmentLeader(_connect(database, autocommit=True), "a")
        other_segment = SegmentLeader(_connect(database, autocommit=True), "b")
        assert not follower.try_lead() and other_segment.try_lead()  # one leader per segment, each its own
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        while not follower.try_lead() and time.monotonic() - killed < 10.0:
            time.sleep(0.1)  # the poll interval of this test
        took = time.monotonic() - killed
        assert follower.leading and took < 10.0, "no takeover within 10 s"
        follower.conn.close()  # a leader whose session is gone no longer leads
        assert not follower.try_lead()
        other_segment.conn.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
