"""The service's work queue: one entry per node, workers, backoff with a cap and a limit, stale eviction, pause."""

import asyncio
import logging

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import queue as wq


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Recorder(wq.QueueObserver):
    def __init__(self):
        self.events = []

    def entered(self, identity, source):
        self.events.append(("entered", identity, source))

    def rejected(self, identity, source):
        self.events.append(("rejected", identity, source))

    def evicted(self, identity, idle):
        self.events.append(("evicted", identity, round(idle)))

    def dropped(self, identity, reason, attempts):
        self.events.append(("dropped", identity, reason, attempts))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_one_entry_per_identity_whatever_finds_it():
    async def main():
        recorder = Recorder()
        queue = wq.WorkQueue(observer=recorder)
        assert queue.add("n1", "startup")
        assert not queue.add("n1", "discovery")
        assert not queue.add("n1", "alive")
        assert queue.add("n2", "discovery")
        assert len(queue) == 2
        first = await queue.take()
        assert not queue.add("n1", "registration"), "a node being worked is not queued again"
        second = await queue.take()
        return recorder.events, [first.identity, second.identity], queue.snapshot()

    events, taken, snapshot = run(main())
    assert events == [("entered", "n1", "startup"), ("entered", "n2", "discovery")]
    assert taken == ["n1", "n2"], "first found, first worked"
    assert (snapshot["queue"], snapshot["busy"], snapshot["busy_nodes"]) == (0, 2, ["n1", "n2"])


def test_unknown_source_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown source 'rumour'"):
        wq.WorkQueue().add("n1", "rumour")


def test_workers_take_at_most_what_is_there_and_wake_on_add():
    async def main():
        queue = wq.WorkQueue()
        takers = [asyncio.ensure_future(queue.take()) for _round in range(3)]
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in takers)
        queue.add("a", "startup")
        queue.add("b", "startup")
        await asyncio.sleep(0.01)
        done = sorted(t.result().identity for t in takers if t.done())
        assert done == ["a", "b"]
        assert queue.busy == 2 and queue.waiting == 0
        takers[2].cancel()
        await asyncio.sleep(0)
        queue.add("c", "startup")
        return await queue.take()

    assert run(main()).identity == "c", "a cancelled waiter does not swallow the next entry"


def test_cancelled_taker_that_was_already_served_gives_its_entry_back():
    async def main():
        queue = wq.WorkQueue()
        taker = asyncio.ensure_future(queue.take())
        await asyncio.sleep(0)
        queue.add("a", "startup")  # hands "a" to the waiter's future...
        taker.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await taker
        assert (queue.busy, queue.waiting) == (0, 1)
        return await queue.take()

    assert run(main()).identity == "a"


def test_complete_forgets_the_node_and_ignores_late_events_for_the_grace():
    async def main():
        clock = FakeClock()
        queue = wq.WorkQueue(clock=clock, done_grace=60)
        queue.add("n1", "startup")
        queue.complete(await queue.take())
        assert len(queue) == 0
        assert not queue.add("n1", "alive"), "a late event right after provisioning is ignored"
        clock.now += 61
        assert queue.add("n1", "startup"), "after the grace a reprovisioned node is queued again"

    run(main())


def test_defer_and_failure_back_off_exponentially_with_a_cap_then_drop():
    async def main():
        clock = FakeClock()
        recorder = Recorder()
        queue = wq.WorkQueue(
            clock=clock, rand=lambda: 0.5, base_delay=2, max_delay=10, retry_limit=5, observer=recorder
        )
        queue.add("n1", "startup")
        delays = []
        for attempt in range(1, 5):
            entry = await queue.take()
            ending = queue.defer if attempt % 2 else queue.fail
            disposition = ending(entry, f"reason {attempt}")
            assert not disposition.dropped
            assert disposition.attempts == attempt
            delays.append(disposition.delay)
            snapshot = queue.snapshot()
            assert snapshot["deferred_nodes"] == [
                {
                    "identity": "n1",
                    "attempts": attempt,
                    "next_attempt_in": disposition.delay,
                    "reason": f"reason {attempt}",
                }
            ]
            assert snapshot["queue"] == 0 and snapshot["deferred"] == 1
            clock.now += disposition.delay - 0.01
            queue.tick()
            assert queue.waiting == 0, "not before the backoff"
            clock.now += 0.01
            queue.tick()
            assert queue.waiting == 1
        last = queue.fail(await queue.take(), "helper exited 1")
        return delays, last, recorder.events, len(queue)

    delays, last, events, left = run(main())
    assert delays == [2, 4, 8, 10], "doubling, capped at max_delay"
    assert last == wq.Disposition(True, 0.0, 5, "helper exited 1")
    assert events[-1] == ("dropped", "n1", "helper exited 1", 5)
    assert left == 0


def test_backoff_jitter_stays_within_a_quarter_and_the_cap():
    queue = wq.WorkQueue(base_delay=4, max_delay=100, rand=lambda: 0.0)
    assert queue.backoff(1) == 3.0
    assert queue.backoff(2) == 6.0
    queue = wq.WorkQueue(base_delay=4, max_delay=100, rand=lambda: 0.999999)
    assert queue.backoff(1) == pytest.approx(5.0, abs=1e-4)
    assert queue.backoff(200) == 100, "huge attempt counts neither overflow nor pass the cap"


def test_deferred_entry_is_handed_to_a_waiting_worker_when_due_without_tick():
    async def main():
        queue = wq.WorkQueue(base_delay=0.05, rand=lambda: 0.5)
        queue.add("n1", "startup")
        queue.defer(await queue.take(), "waiting for approval")
        loop = asyncio.get_running_loop()
        start = loop.time()
        entry = await queue.take()
        return entry.identity, loop.time() - start

    identity, waited = run(main())
    assert identity == "n1"
    assert 0.04 <= waited < 0.5


def test_postpone_does_not_count_an_attempt():
    async def main():
        clock = FakeClock()
        queue = wq.WorkQueue(clock=clock, retry_limit=2)
        queue.add("n1", "startup")
        for _round in range(5):
            queue.postpone(await queue.take(), 3.0, "claimed by prov-b")
            assert queue.snapshot()["deferred_nodes"][0]["attempts"] == 0
            clock.now += 3
            queue.tick()
        return await queue.take()

    assert run(main()).attempts == 0


def test_drop_done_elsewhere_is_not_a_failure_and_keeps_the_grace():
    async def main():
        recorder = Recorder()
        queue = wq.WorkQueue(observer=recorder)
        queue.add("n1", "startup")
        queue.drop(await queue.take(), "provisioned by prov-b", done_elsewhere=True)
        assert not queue.add("n1", "alive")
        queue.add("n2", "startup")
        queue.drop(await queue.take(), "not a node we may provision")
        return recorder.events

    events = run(main())
    assert [e[0] for e in events] == ["entered", "entered", "dropped"]
    assert events[-1] == ("dropped", "n2", "not a node we may provision", 0)


def test_ending_an_entry_twice_is_refused():
    async def main():
        queue = wq.WorkQueue()
        queue.add("n1", "startup")
        entry = await queue.take()
        queue.complete(entry)
        with pytest.raises(ValueError, match="n1 is not being worked"):
            queue.fail(entry, "again")

    run(main())


def test_stale_nodes_leave_but_not_while_worked_or_while_seen():
    async def main():
        clock = FakeClock()
        recorder = Recorder()
        queue = wq.WorkQueue(clock=clock, stale_after=90, observer=recorder, base_delay=1000)
        for name in ("quiet", "chatty", "worked", "deferred"):
            queue.add(name, "discovery")
        taken = [await queue.take() for _round in range(4)]
        by_name = {e.identity: e for e in taken}
        queue.postpone(by_name["quiet"], 0, "")
        queue.postpone(by_name["chatty"], 0, "")
        queue.defer(by_name["deferred"], "later")
        for _round in range(3):
            clock.now += 30
            queue.add("chatty", "discovery")
            queue.tick()
        clock.now += 1
        queue.tick()
        return recorder.events, sorted(e for e in ("quiet", "chatty", "worked", "deferred") if e in queue), queue

    events, left, queue = run(main())
    assert [e for e in events if e[0] == "evicted"] == [("evicted", "quiet", 91), ("evicted", "deferred", 91)]
    assert left == ["chatty", "worked"]
    assert (queue.waiting, queue.deferred, queue.busy) == (1, 0, 1)


def test_full_queue_refuses_counts_and_logs_once_per_period(caplog):
    clock = FakeClock()
    recorder = Recorder()
    queue = wq.WorkQueue(limit=2, clock=clock, observer=recorder)
    with caplog.at_level(logging.WARNING, logger="zeroinit.provisioner.queue"):
        assert queue.add("a", "startup") and queue.add("b", "startup")
        for index in range(5):
            assert not queue.add(f"x{index}", "startup")
        clock.now += wq.LOG_EVERY
        assert not queue.add("y", "discovery")
    assert queue.rejected_total == 6
    assert len(queue) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "work queue full (2 nodes): refused x0 and 0 more since the last warning",
        "work queue full (2 nodes): refused y and 4 more since the last warning",
    ]
    assert recorder.events.count(("rejected", "x3", "startup")) == 1


def test_pause_stops_handing_out_at_once_and_resume_continues_from_the_queue():
    async def main():
        queue = wq.WorkQueue()
        for name in ("a", "b", "c"):
            queue.add(name, "startup")
        in_flight = await queue.take()
        queue.pause()
        assert queue.snapshot()["paused"]
        takers = [asyncio.ensure_future(queue.take()) for _round in range(2)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in takers), "nothing starts while paused"
        queue.add("d", "startup")
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in takers)
        queue.complete(in_flight)  # the node already in flight finishes
        queue.resume()
        await asyncio.sleep(0.01)
        resumed = sorted(t.result().identity for t in takers)
        return resumed, (await queue.take()).identity

    resumed, last = run(main())
    assert resumed == ["b", "c"]
    assert last == "d"


def test_many_nodes_many_workers_each_node_worked_once():
    async def main():
        queue = wq.WorkQueue(base_delay=0.001, max_delay=0.002)
        worked = []

        async def worker():
            while True:
                entry = await queue.take()
                await asyncio.sleep(0)
                if entry.identity.endswith("7") and entry.attempts == 0:
                    queue.defer(entry, "not yet")
                else:
                    worked.append(entry.identity)
                    queue.complete(entry)

        workers = [asyncio.ensure_future(worker()) for _round in range(20)]
        for index in range(500):
            queue.add(f"node{index}", "discovery")
            queue.add(f"node{index}", "startup")
        while len(worked) < 500:
            await asyncio.sleep(0.01)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return worked, queue

    worked, queue = run(main())
    assert sorted(worked) == sorted(f"node{i}" for i in range(500))
    assert (len(queue), queue.waiting, queue.deferred, queue.busy) == (0, 0, 0, 0)


def test_snapshot_is_bounded():
    async def main():
        clock = FakeClock()
        queue = wq.WorkQueue(clock=clock)
        for index in range(300):
            queue.add(f"n{index:03}", "discovery")
        for _round in range(250):
            entry = await queue.take()
            queue.defer(entry, "x" * 1000)
        return queue.snapshot(limit=100)

    snapshot = run(main())
    assert (snapshot["queue"], snapshot["deferred"], snapshot["entries"]) == (50, 250, 300)
    assert len(snapshot["deferred_nodes"]) == 100
    assert all(len(node["reason"]) == 200 for node in snapshot["deferred_nodes"])


def test_a_due_entry_goes_to_the_worker_waiting_longest():
    async def main():
        clock = FakeClock()
        queue = wq.WorkQueue(clock=clock, base_delay=10, rand=lambda: 0.5)
        queue.add("n1", "startup")
        queue.defer(await queue.take(), "later")
        first = asyncio.ensure_future(queue.take())
        await asyncio.sleep(0)
        clock.now += 10  # due, though no timer fired under the fake clock
        second = asyncio.ensure_future(queue.take())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        served = (first.done(), second.done())
        second.cancel()
        return served, (await first).identity

    served, identity = run(main())
    assert served == (True, False)
    assert identity == "n1"
