"""``ConnectionRate``: new connections per minute per address, in a sliding window."""

from __future__ import annotations

from smtpgate.server.connection_rate import SIZE, ConnectionRate
from smtpgate.server.limits import ConnectionLimiter, SharedConnectionLimiter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _counts() -> memoryview:
    return memoryview(bytearray(SIZE * 4)).cast("I")


def test_the_rate_holds_within_a_minute_and_refusals_count() -> None:
    clock = Clock(6000.0)
    rate, counts = ConnectionRate(3, clock=clock), _counts()
    assert [rate.take(counts, 0, "192.0.2.1") for _ in range(5)] == [True] * 3 + [False] * 2
    assert rate.take(counts, 0, "192.0.2.2")  # another address is another client
    clock.now += 59
    assert not rate.take(counts, 0, "192.0.2.1")


def test_the_window_slides_over_the_minute_turn() -> None:
    """Three at the end of one minute still count at the start of the next: a burst
    at a minute's turn is not let through twice."""
    clock = Clock(6059.0)
    rate, counts = ConnectionRate(3, clock=clock), _counts()
    assert all(rate.take(counts, 0, "192.0.2.1") for _ in range(3))
    clock.now = 6061.0  # the next minute, 1 s later: the last minute's 3 weigh 59/60, rounded up
    assert not rate.take(counts, 0, "192.0.2.1")
    clock.now = 6061.0 + 50  # the last minute's 4 weigh 8/60 (rounded up, 1): room again
    assert rate.take(counts, 0, "192.0.2.1")
    clock.now = 6000.0 + 300  # minutes later: everything before is forgotten
    assert all(rate.take(counts, 0, "192.0.2.1") for _ in range(3))
    assert not rate.take(counts, 0, "192.0.2.1")


def test_ipv6_is_counted_by_its_64_and_exceptions_are_not_counted() -> None:
    clock = Clock(6000.0)
    rate = ConnectionRate(2, ["10.0.0.0/8", "::1/128"], clock=clock)
    counts = _counts()
    assert rate.take(counts, 0, "2001:db8:1:2::1")
    assert rate.take(counts, 0, "2001:db8:1:2::2")
    assert not rate.take(counts, 0, "2001:db8:1:2:ffff::3")  # the same /64
    assert rate.take(counts, 0, "2001:db8:1:3::1")  # the next /64
    assert all(rate.take(counts, 0, "10.1.2.3") for _ in range(10))
    assert all(rate.take(counts, 0, "::1") for _ in range(10))
    assert all(rate.take(counts, 0, "::ffff:10.1.2.3") for _ in range(10))


def test_zero_turns_it_off_and_a_reload_keeps_the_counts() -> None:
    clock = Clock(6000.0)
    rate, counts = ConnectionRate(0, clock=clock), _counts()
    assert all(rate.take(counts, 0, "192.0.2.1") for _ in range(1000))
    rate.set_limit(2, [])
    assert rate.take(counts, 0, "192.0.2.9") and rate.take(counts, 0, "192.0.2.9")
    rate.set_limit(3, [])
    assert rate.take(counts, 0, "192.0.2.9")
    assert not rate.take(counts, 0, "192.0.2.9")


def test_the_limiters_refuse_with_rate_before_counting_a_slot() -> None:
    clock = Clock(6000.0)
    single = ConnectionLimiter(100, 100, ConnectionRate(2, clock=clock))
    assert single.acquire("192.0.2.1") is None and single.acquire("192.0.2.1") is None
    assert single.acquire("192.0.2.1") == "rate"
    assert single.total == 2
    assert single.acquire("192.0.2.1", proxy=True) is None  # a trusted XCLIENT proxy
    shared = SharedConnectionLimiter(100, 100, 2, ConnectionRate(2, clock=clock))
    try:
        shared.attach(0)
        assert shared.acquire("192.0.2.1") is None
        shared.attach(1)  # another worker: the rate is the server's, not the worker's
        assert shared.acquire("192.0.2.1") is None
        assert shared.acquire("192.0.2.1") == "rate"
        shared.clear(1)  # a worker's death takes back its open connections, not the rate
        shared.attach(1)
        assert shared.acquire("192.0.2.1") == "rate"
        assert shared.server_total() == 1
    finally:
        shared.close()


def test_the_concurrent_limit_counts_an_ipv6_client_by_its_64_and_a_mapped_one_as_ipv4() -> None:
    """``max_connections_per_ip`` counted an IPv6 client by its exact address, so one
    /64 opened a session from each of its addresses, up to ``max_connections``; it is
    now counted as the guard and the rate count it (an IPv4-mapped address as the
    IPv4 one), in one process and across workers, and given back the same way."""
    single = ConnectionLimiter(100, 2)
    shared = SharedConnectionLimiter(100, 2, 2)
    try:
        shared.attach(0)
        for limiter in (single, shared):
            assert limiter.acquire("2001:db8:1:2::1") is None
            assert limiter.acquire("2001:db8:1:2:aaaa::7") is None
            assert limiter.acquire("2001:db8:1:2:ffff::9") == "per_ip"
            assert limiter.acquire("2001:db8:1:3::1") is None  # another /64
            limiter.release("2001:db8:1:2::1")
            assert limiter.acquire("2001:db8:1:2::5") is None
            assert limiter.acquire("192.0.2.4") is None
            assert limiter.acquire("::ffff:192.0.2.4") is None
            assert limiter.acquire("192.0.2.4") == "per_ip"
            assert limiter.acquire("::ffff:192.0.2.4") == "per_ip"
            for ip in ("::ffff:192.0.2.4", "2001:db8:1:2::5"):
                limiter.release(ip)
            assert limiter.acquire("192.0.2.4") is None
            assert limiter.acquire("2001:db8:1:2::6") is None
    finally:
        shared.close()


def test_a_trusted_proxys_connections_count_in_the_total_only() -> None:
    """nginx connects to its upstream listener from one address for every client it
    authenticated: counted per address, it held max_connections_per_ip sessions for
    all of them together, and the next client whose login had succeeded got nginx's
    451 4.3.2. A direct client from that address keeps its cap."""
    single = ConnectionLimiter(6, 2)
    shared = SharedConnectionLimiter(6, 2, 2)
    try:
        shared.attach(0)
        for limiter in (single, shared):
            assert [limiter.acquire("127.0.0.1", proxy=True) for _ in range(4)] == [None] * 4
            assert limiter.acquire("127.0.0.1") is None and limiter.acquire("127.0.0.1") is None
            assert limiter.acquire("127.0.0.1") == "total"
            for _ in range(4):
                limiter.release("127.0.0.1", proxy=True)
            assert limiter.acquire("127.0.0.1") == "per_ip"  # the direct client's cap
            limiter.release("127.0.0.1")
            assert limiter.acquire("127.0.0.1") is None  # released what it took, no more
        assert shared.server_total() == 2
    finally:
        shared.close()
