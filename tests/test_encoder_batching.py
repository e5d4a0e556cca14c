"""Token-budget batching, out-of-memory halving and the device work queue."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from m3ingest.encoder.batching import BatchTooLargeError, plan_batches, run_with_backoff, split_on_oom
from m3ingest.encoder.workqueue import run_queue


@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_input_once_within_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([2, 5, 30, 200, 1500, 8192]) + rng.randrange(10) for _ in range(300)]
    budget = 4096
    batches = plan_batches(lengths, budget)

    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        assert sizes == sorted(sizes, reverse=True)
        assert len(batch) == 1 or max(sizes) * len(batch) <= budget
    # Longest first, so an out-of-memory shows on the first batch rather than the last.
    assert lengths[batches[0][0]] == max(lengths)
    # Sorting keeps padding small: a tenth of the padded tokens at most on this mix.
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded <= 1.1 * sum(lengths)


def test_padding_stays_small_on_continuous_lengths():
    rng = random.Random(7)
    lengths = [int(rng.lognormvariate(5, 1.2)) + 3 for _ in range(500)]
    batches = plan_batches(lengths, 16384)
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        assert min(sizes) >= 0.95 * max(sizes)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded <= 1.05 * sum(lengths)


def test_batch_is_greedy_up_to_the_budget():
    assert plan_batches([10] * 10, 40) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_batches([100, 3, 3], 50) == [[0], [1, 2]]
    assert plan_batches([], 10) == []


class _FakeDevice:
    """A forward that runs out of memory above ``capacity`` inputs, like a CUDA device would."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.calls: list[int] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(len(items))
        if len(items) > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in items]


def test_out_of_memory_halves_the_batch_and_keeps_order():
    device = _FakeDevice(capacity=3)
    cleared = []
    result = run_with_backoff(list(range(10)), device, after_oom=lambda: cleared.append(1))

    assert result == [x * 10 for x in range(10)]
    # 10 fails, its first half (5) fails, 2 and 3 fit; the same again for the second half.
    assert device.calls == [10, 5, 2, 3, 5, 2, 3]
    assert len(cleared) == 3


def test_out_of_memory_below_the_floor_is_a_clear_error():
    with pytest.raises(BatchTooLargeError, match=r"max_length or model\.batch_tokens"):
        run_with_backoff(list(range(8)), _FakeDevice(capacity=0), describe=lambda b: f"{len(b)} texts")
    with pytest.raises(BatchTooLargeError):
        run_with_backoff(list(range(8)), _FakeDevice(capacity=2), min_items=4)


def test_other_errors_are_not_retried():
    calls = []

    def broken(items):
        calls.append(items)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        run_with_backoff([1, 2, 3, 4], broken)
    assert len(calls) == 1


def test_queue_spreads_work_and_keeps_order():
    seen: dict[str, int] = {}
    lock = threading.Lock()
    gate = threading.Barrier(2)

    def worker(name):
        def run(item):
            with lock:
                first = name not in seen
                seen[name] = seen.get(name, 0) + 1
            if first:
                gate.wait(timeout=10)  # both workers must have taken an item before either goes on
            return (item, item * item)

        return run

    done = []
    out = run_queue(list(range(20)), [worker("a"), worker("b")], on_done=done.append)
    assert out == [(i, i * i) for i in range(20)]
    assert set(seen) == {"a", "b"} and sum(seen.values()) == 20
    assert sorted(done) == list(range(20))


def test_queue_raises_a_worker_error():
    def bad(item):
        raise RuntimeError(f"device failed on {item}")

    with pytest.raises(RuntimeError, match="device failed"):
        run_queue([1, 2, 3], [bad, bad])


def test_queue_keeps_one_item_in_flight_while_finishing_the_last():
    events: list[str] = []

    def worker(item):
        events.append(f"start {item}")

        def finish():
            events.append(f"finish {item}")
            return item * 2

        return finish

    done = []
    assert run_queue([1, 2, 3], [worker], on_done=done.append, in_flight=1) == [2, 4, 6]
    assert events == ["start 1", "start 2", "finish 1", "start 3", "finish 2", "finish 3"]
    assert done == [1, 2, 3]


def test_queue_with_items_in_flight_spreads_over_workers_and_raises_errors():
    def worker(item):
        if item == 7:
            raise RuntimeError("device failed on 7")
        return lambda: item

    assert run_queue(list(range(6)), [worker, worker], in_flight=1) == list(range(6))
    with pytest.raises(RuntimeError, match="device failed on 7"):
        run_queue(list(range(10)), [worker, worker], in_flight=1)


def test_split_on_oom_returns_each_part_with_its_result():
    device = _FakeDevice(capacity=3)
    parts = split_on_oom(list(range(7)), lambda items: sum(device(items)))
    # 7 fails; [0, 1, 2] fits; [3, 4, 5, 6] fails and splits in two.
    assert parts == [([0, 1, 2], 30), ([3, 4], 70), ([5, 6], 110)]
