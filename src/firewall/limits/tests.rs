use super::*;

use governor::clock::FakeRelativeClock;

fn nz(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

fn no_limits() -> RateLimits {
    RateLimits {
        messages_per_second: None,
        burst: None,
        bytes_per_second: None,
        connections_per_minute: None,
        max_connections_per_source: None,
        on_limit: OnLimit::Delay,
        max_tracked_sources: 1000,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fake(cfg: RateLimits) -> (Arc<SourceLimits<FakeRelativeClock>>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (
        Arc::new(SourceLimits::with_clock(&cfg, clock.clone())),
        clock,
    )
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn burst_many_messages_pass_at_once_then_the_next_waits_one_interval() {
    let (limits, clock) = fake(RateLimits {
        messages_per_second: nz(10),
        burst: nz(20),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    for _ in 0..20 {
        assert_eq!(limits.check_message(peer, 100), Ok(()));
    }
    assert_eq!(limits.check_message(peer, 100), Err(ms(100)));
    clock.advance(ms(99));
    assert_eq!(limits.check_message(peer, 100), Err(ms(1)));
    clock.advance(ms(1));
    assert_eq!(limits.check_message(peer, 100), Ok(()));
    assert_eq!(limits.check_message(peer, 100), Err(ms(100)));
}

#[test]
fn burst_defaults_to_messages_per_second() {
    let (limits, _clock) = fake(RateLimits {
        messages_per_second: nz(5),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    for _ in 0..5 {
        assert_eq!(limits.check_message(peer, 1), Ok(()));
    }
    assert_eq!(limits.check_message(peer, 1), Err(ms(200)));
}

#[test]
fn sources_are_limited_independently() {
    let (limits, _clock) = fake(RateLimits {
        messages_per_second: nz(1),
        ..no_limits()
    });
    assert_eq!(limits.check_message(ip("127.0.0.1"), 1), Ok(()));
    assert_eq!(limits.check_message(ip("127.0.0.1"), 1), Err(ms(1000)));
    assert_eq!(limits.check_message(ip("127.0.0.2"), 1), Ok(()));
    assert_eq!(limits.check_message(ip("127.0.0.2"), 1), Err(ms(1000)));
    assert_eq!(limits.tracked_sources(), 2);
}

#[test]
fn ipv6_addresses_in_one_slash_64_share_a_key_and_another_slash_64_does_not() {
    let a = SourceLimits::<DefaultClock>::key(ip("2001:db8:1:2::1"));
    let b = SourceLimits::<DefaultClock>::key(ip("2001:db8:1:2:ffff:ffff:ffff:9"));
    let other = SourceLimits::<DefaultClock>::key(ip("2001:db8:1:3::1"));
    assert_eq!(a, SourceKey::Ipv6Net("2001:db8:1:2::".parse().unwrap()));
    assert_eq!(a, b);
    assert_ne!(a, other);
    assert_eq!(a.to_string(), "2001:db8:1:2::/64");

    let (limits, _clock) = fake(RateLimits {
        messages_per_second: nz(1),
        ..no_limits()
    });
    assert_eq!(limits.check_message(ip("2001:db8:1:2::1"), 1), Ok(()));
    assert_eq!(
        limits.check_message(ip("2001:db8:1:2:ffff:ffff:ffff:9"), 1),
        Err(ms(1000))
    );
    assert_eq!(limits.check_message(ip("2001:db8:1:3::1"), 1), Ok(()));
    assert_eq!(limits.tracked_sources(), 2);
}

#[test]
fn ipv4_mapped_ipv6_is_limited_as_the_ipv4_address() {
    let key = SourceLimits::<DefaultClock>::key(ip("::ffff:10.1.2.3"));
    assert_eq!(key, SourceKey::Ipv4(Ipv4Addr::new(10, 1, 2, 3)));
    assert_eq!(key.to_string(), "10.1.2.3");

    let (limits, _clock) = fake(RateLimits {
        messages_per_second: nz(1),
        max_connections_per_source: Some(1),
        ..no_limits()
    });
    let _permit = limits.admit_connection(ip("10.1.2.3")).unwrap();
    assert_eq!(
        limits.admit_connection(ip("::ffff:10.1.2.3")).unwrap_err(),
        Refusal::TooManyConnections(1)
    );
    assert_eq!(limits.check_message(ip("10.1.2.3"), 1), Ok(()));
    assert_eq!(
        limits.check_message(ip("::ffff:10.1.2.3"), 1),
        Err(ms(1000))
    );
    assert_eq!(limits.tracked_sources(), 1);
}

#[test]
fn bytes_per_second_waits_for_the_bytes_beyond_the_quota() {
    let (limits, clock) = fake(RateLimits {
        bytes_per_second: Some(1000),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    assert_eq!(limits.check_message(peer, 600), Ok(()));
    // 600 + 600 - 1000 = 200 bytes too many at 1000 B/s.
    assert_eq!(limits.check_message(peer, 600), Err(ms(200)));
    clock.advance(ms(200));
    assert_eq!(limits.check_message(peer, 600), Ok(()));
    assert_eq!(limits.check_message(peer, 0), Ok(()));
}

#[test]
fn a_message_bigger_than_the_byte_quota_passes_on_a_full_bucket_then_blocks_for_its_cost() {
    let (limits, clock) = fake(RateLimits {
        bytes_per_second: Some(1000),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    assert_eq!(limits.check_message(peer, 2500), Ok(()));
    // 2500 bytes at 1000 B/s: nothing more for 2.5 s.
    assert_eq!(limits.check_message(peer, 1), Err(ms(2500)));
    clock.advance(ms(2499));
    assert_eq!(limits.check_message(peer, 1), Err(ms(1)));
    clock.advance(ms(1));
    // Then a full second's burst, as for any quiet source, and no more.
    assert_eq!(limits.check_message(peer, 1), Ok(()));
    assert_eq!(limits.check_message(peer, 999), Ok(()));
    assert_eq!(limits.check_message(peer, 1), Err(ms(1)));
}

#[test]
fn a_message_bigger_than_the_byte_quota_waits_for_a_full_bucket() {
    let (limits, clock) = fake(RateLimits {
        bytes_per_second: Some(1000),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    assert_eq!(limits.check_message(peer, 1), Ok(()));
    assert_eq!(limits.check_message(peer, 2500), Err(ms(1)));
    clock.advance(ms(1));
    assert_eq!(limits.check_message(peer, 2500), Ok(()));
    assert_eq!(limits.check_message(peer, 2500), Err(ms(2500)));
}

#[test]
fn byte_rates_above_a_million_per_second_are_counted_in_coarser_cells() {
    // 10 MiB/s: cells of 11 bytes, 953_250 per second, one per 1050 ns (rounded up).
    let (quota, unit) = byte_quota(10 * 1024 * 1024);
    assert_eq!(unit, 11);
    assert_eq!(quota.burst_size().get(), 953_250);
    assert_eq!(quota.replenish_interval(), Duration::from_nanos(1050));
    let (quota, unit) = byte_quota(1000);
    assert_eq!((unit, quota.burst_size().get()), (1, 1000));
    assert_eq!(quota.replenish_interval(), ms(1));
    let (quota, _unit) = byte_quota(u64::MAX);
    assert_eq!(quota.burst_size().get(), 999_999);

    let (limits, _clock) = fake(RateLimits {
        bytes_per_second: Some(10 * 1024 * 1024),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    assert_eq!(limits.check_message(peer, 953_250 * 11), Ok(()));
    assert_eq!(
        limits.check_message(peer, 1),
        Err(Duration::from_nanos(1050))
    );
}

#[test]
fn a_message_refused_by_message_rate_costs_no_bytes() {
    let (limits, clock) = fake(RateLimits {
        messages_per_second: nz(1),
        bytes_per_second: Some(1000),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    assert_eq!(limits.check_message(peer, 1000), Ok(()));
    assert_eq!(limits.check_message(peer, 1000), Err(ms(1000)));
    clock.advance(ms(1000));
    assert_eq!(limits.check_message(peer, 1000), Ok(()));
}

#[test]
fn connections_per_minute_refuses_the_next_connection_until_one_interval_passes() {
    let (limits, clock) = fake(RateLimits {
        connections_per_minute: nz(2),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    drop(limits.admit_connection(peer).unwrap());
    drop(limits.admit_connection(peer).unwrap());
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::ConnectionRate(2)
    );
    assert!(limits.admit_connection(ip("127.0.0.2")).is_ok());
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::ConnectionRate(2)
    );
    clock.advance(Duration::from_secs(1));
    drop(limits.admit_connection(peer).unwrap());
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::ConnectionRate(2)
    );
}

#[test]
fn max_connections_per_source_refuses_until_a_permit_is_dropped() {
    let (limits, _clock) = fake(RateLimits {
        max_connections_per_source: Some(2),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    let first = limits.admit_connection(peer).unwrap();
    let _second = limits.admit_connection(peer).unwrap();
    assert_eq!(
        first.source(),
        Some(SourceKey::Ipv4(Ipv4Addr::new(127, 0, 0, 1)))
    );
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::TooManyConnections(2)
    );
    let _other = limits.admit_connection(ip("127.0.0.2")).unwrap();
    drop(first);
    let _third = limits.admit_connection(peer).unwrap();
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::TooManyConnections(2)
    );
}

#[test]
fn a_connection_refused_for_too_many_open_uses_none_of_the_connection_rate() {
    let (limits, _clock) = fake(RateLimits {
        connections_per_minute: nz(3),
        max_connections_per_source: Some(1),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    let permit = limits.admit_connection(peer).unwrap();
    for _ in 0..5 {
        assert_eq!(
            limits.admit_connection(peer).unwrap_err(),
            Refusal::TooManyConnections(1)
        );
    }
    drop(permit);
    drop(limits.admit_connection(peer).unwrap());
    drop(limits.admit_connection(peer).unwrap());
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::ConnectionRate(3)
    );
}

#[test]
fn new_sources_beyond_the_cap_are_refused_while_tracked_sources_keep_working() {
    let (limits, _clock) = fake(RateLimits {
        messages_per_second: nz(1),
        max_tracked_sources: 2,
        ..no_limits()
    });
    let _a = limits.admit_connection(ip("127.0.0.1")).unwrap();
    let _b = limits.admit_connection(ip("127.0.0.2")).unwrap();
    assert_eq!(
        limits.admit_connection(ip("127.0.0.3")).unwrap_err(),
        Refusal::TooManySources(2)
    );
    let _a2 = limits.admit_connection(ip("127.0.0.1")).unwrap();
    assert_eq!(limits.check_message(ip("127.0.0.1"), 1), Ok(()));
    assert_eq!(limits.check_message(ip("127.0.0.1"), 1), Err(ms(1000)));
    assert_eq!(limits.tracked_sources(), 2);
    assert_eq!(limits.messages.as_ref().unwrap().len(), 1);
}

#[test]
fn prune_forgets_idle_sources_and_frees_room_under_the_cap() {
    let (limits, clock) = fake(RateLimits {
        messages_per_second: nz(1),
        max_tracked_sources: 2,
        ..no_limits()
    });
    for peer in ["127.0.0.1", "127.0.0.2"] {
        let _permit = limits.admit_connection(ip(peer)).unwrap();
        assert_eq!(limits.check_message(ip(peer), 1), Ok(()));
    }
    let held = limits.admit_connection(ip("127.0.0.1")).unwrap();
    assert_eq!(
        limits.admit_connection(ip("127.0.0.3")).unwrap_err(),
        Refusal::TooManySources(2)
    );
    // Idle = one full refill (1 s) plus one cell (1 s) after the last use.
    clock.advance(ms(1999));
    limits.prune();
    assert_eq!(limits.tracked_sources(), 2);
    clock.advance(ms(1));
    limits.prune();
    // 127.0.0.1 still has an open connection; 127.0.0.2 is forgotten everywhere.
    assert_eq!(limits.tracked_sources(), 1);
    assert_eq!(limits.messages.as_ref().unwrap().len(), 0);
    let _c = limits.admit_connection(ip("127.0.0.3")).unwrap();
    drop(held);
    clock.advance(ms(2000));
    limits.prune();
    assert_eq!(limits.tracked_sources(), 1);
}

#[test]
fn prune_keeps_a_source_that_owes_an_oversize_message() {
    let (limits, clock) = fake(RateLimits {
        bytes_per_second: Some(1000),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    assert_eq!(limits.check_message(peer, 5000), Ok(()));
    clock.advance(ms(3000));
    limits.prune();
    assert_eq!(limits.tracked_sources(), 1);
    assert_eq!(limits.check_message(peer, 1), Err(ms(2000)));
    clock.advance(ms(2000));
    limits.prune();
    assert_eq!(limits.tracked_sources(), 0);
    assert_eq!(limits.check_message(peer, 1000), Ok(()));
}

#[test]
fn limiter_keys_never_outnumber_tracked_sources_and_tracked_sources_never_pass_the_cap() {
    let (limits, clock) = fake(RateLimits {
        messages_per_second: nz(2),
        burst: nz(3),
        bytes_per_second: Some(100),
        connections_per_minute: nz(5),
        max_connections_per_source: Some(3),
        on_limit: OnLimit::Reject,
        max_tracked_sources: 20,
    });
    let mut permits = Vec::new();
    for round in 0u32..40 {
        for host in 0..50u32 {
            let peer = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + (host * 7 + round) % 60));
            if let Ok(permit) = limits.admit_connection(peer) {
                let _ = limits.check_message(peer, 40 + host as usize);
                if host % 5 == 0 {
                    permits.push(permit);
                }
            }
        }
        if round % 4 == 0 {
            permits.clear();
        }
        clock.advance(ms(3000));
        limits.prune();
        let tracked = limits.tracked_sources();
        assert!(tracked <= 20, "tracked {tracked}");
        for limiter in limits.limiters() {
            assert!(
                limiter.len() <= tracked,
                "{} keys, {tracked} tracked",
                limiter.len()
            );
        }
    }
    drop(permits);
    // Idle = the connection limiter's full refill (60 s) plus one cell (12 s); the last
    // round was 3 s ago.
    let tracked = limits.tracked_sources();
    assert!(tracked > 0);
    clock.advance(Duration::from_secs(68));
    limits.prune();
    assert_eq!(limits.tracked_sources(), tracked);
    clock.advance(Duration::from_secs(1));
    limits.prune();
    assert_eq!(limits.tracked_sources(), 0);
    assert!(limits.limiters().all(|limiter| limiter.is_empty()));
}

#[test]
fn no_limits_configured_allows_everything_without_tracking_state() {
    let (limits, _clock) = fake(RateLimits {
        max_tracked_sources: 0,
        ..no_limits()
    });
    let mut permits = Vec::new();
    for host in 0..1000u32 {
        let peer = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + host));
        let permit = limits.admit_connection(peer).unwrap();
        assert_eq!(permit.source(), None);
        permits.push(permit);
        assert_eq!(limits.check_message(peer, 64 << 20), Ok(()));
    }
    limits.prune();
    assert_eq!(limits.tracked_sources(), 0);
    assert_eq!(limits.limiters().count(), 0);
}

#[test]
fn a_message_from_a_source_never_admitted_is_tracked_if_there_is_room_and_told_to_wait_if_not() {
    let (limits, _clock) = fake(RateLimits {
        messages_per_second: nz(10),
        max_tracked_sources: 1,
        ..no_limits()
    });
    assert_eq!(limits.check_message(ip("127.0.0.1"), 1), Ok(()));
    assert_eq!(limits.tracked_sources(), 1);
    assert_eq!(
        limits.check_message(ip("127.0.0.2"), 1),
        Err(UNTRACKED_SOURCE_RETRY)
    );
    assert_eq!(limits.tracked_sources(), 1);
    assert_eq!(limits.messages.as_ref().unwrap().len(), 1);
}

#[test]
fn permits_released_from_many_threads_return_every_slot() {
    let (limits, _clock) = fake(RateLimits {
        max_connections_per_source: Some(4),
        ..no_limits()
    });
    let peer = ip("127.0.0.1");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let limits = Arc::clone(&limits);
            scope.spawn(move || {
                for _ in 0..1000 {
                    drop(limits.admit_connection(peer).unwrap());
                }
            });
        }
    });
    let permits: Vec<_> = (0..4)
        .map(|_| limits.admit_connection(peer).unwrap())
        .collect();
    assert_eq!(
        limits.admit_connection(peer).unwrap_err(),
        Refusal::TooManyConnections(4)
    );
    drop(permits);
}

#[test]
fn the_default_clock_limits_in_real_time() {
    let limits = Arc::new(SourceLimits::new(&RateLimits {
        messages_per_second: nz(1),
        max_connections_per_source: Some(1),
        on_limit: OnLimit::Reject,
        ..no_limits()
    }));
    assert_eq!(limits.on_limit(), OnLimit::Reject);
    let peer = ip("127.0.0.1");
    let _permit: ConnectionPermit = limits.admit_connection(peer).unwrap();
    assert_eq!(limits.check_message(peer, 1), Ok(()));
    let wait = limits.check_message(peer, 1).unwrap_err();
    assert!(wait > ms(500) && wait <= ms(1000), "{wait:?}");
}

#[test]
fn source_limits_and_permits_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SourceLimits>();
    send_sync::<ConnectionPermit>();
}

#[test]
fn refusals_say_what_was_exceeded() {
    assert_eq!(
        Refusal::ConnectionRate(60).to_string(),
        "more than 60 new connections per minute from this source"
    );
    assert_eq!(
        Refusal::TooManyConnections(8).to_string(),
        "8 connections already open from this source"
    );
    assert_eq!(
        Refusal::TooManySources(100_000).to_string(),
        "too many sources tracked (100000); refusing new sources until idle ones expire"
    );
}
