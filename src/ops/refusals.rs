//! How often a refused connection is logged: the first refusal of a source on a route is
//! logged, the ones that follow within [`INTERVAL`] are only counted, and the next refusal after
//! it is logged with how many were not. A flood of refused connections writes a line per source
//! per interval instead of a line each (the metrics still count every one).
//!
//! Owns the per-source memory of recent refusals, bounded to [`MAX_SOURCES`] sources (beyond
//! that, refusals of new sources are logged each: never silenced). Must not know why a
//! connection was refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A source's refusals are summarised over this long.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Sources remembered at most (their memory bound).
pub const MAX_SOURCES: usize = 4096;

/// Whether to write the log line of a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Write it; `not_logged` refusals of this source on this route came since the last line.
    Log { not_logged: u64 },
    /// Only count it.
    Quiet,
}

#[derive(Default)]
struct Recent {
    /// (route, source) -> (when its current interval started, refusals not logged in it).
    sources: HashMap<(Box<str>, IpAddr), (Instant, u64)>,
}

fn recent() -> &'static Mutex<Recent> {
    static RECENT: OnceLock<Mutex<Recent>> = OnceLock::new();
    RECENT.get_or_init(Mutex::default)
}

/// Records a refused connection of `source` on `route` at `now` and says whether to log it.
pub fn refused(route: &str, source: IpAddr, now: Instant) -> Refusal {
    let mut recent = recent().lock().unwrap_or_else(|e| e.into_inner());
    recent.note(route, source.to_canonical(), now)
}

impl Recent {
    fn note(&mut self, route: &str, source: IpAddr, now: Instant) -> Refusal {
        let key = (Box::<str>::from(route), source);
        if let Some((since, not_logged)) = self.sources.get_mut(&key) {
            if now.duration_since(*since) < INTERVAL {
                *not_logged += 1;
                return Refusal::Quiet;
            }
            let summary = std::mem::take(not_logged);
            *since = now;
            return Refusal::Log {
                not_logged: summary,
            };
        }
        if self.sources.len() >= MAX_SOURCES {
            // Forget the sources whose interval is over (their count, if any, is lost; their
            // next refusal is logged again).
            self.sources
                .retain(|_, (since, _)| now.duration_since(*since) < INTERVAL);
        }
        if self.sources.len() < MAX_SOURCES {
            self.sources.insert(key, (now, 0));
        }
        Refusal::Log { not_logged: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_logged_the_rest_of_the_interval_counted_then_summarised() {
        let mut r = Recent::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(r.note("lab", a, t0), Refusal::Log { not_logged: 0 });
        for i in 1..=99 {
            assert_eq!(
                r.note("lab", a, t0 + Duration::from_millis(i)),
                Refusal::Quiet
            );
        }
        // Another source, or the same one on another route, is logged on its own.
        assert_eq!(r.note("lab", b, t0), Refusal::Log { not_logged: 0 });
        assert_eq!(r.note("adt", a, t0), Refusal::Log { not_logged: 0 });
        let later = t0 + INTERVAL;
        assert_eq!(r.note("lab", a, later), Refusal::Log { not_logged: 99 });
        assert_eq!(r.note("lab", a, later), Refusal::Quiet);
    }

    #[test]
    fn memory_is_bounded_and_new_sources_are_never_silenced() {
        let mut r = Recent::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(r.note("lab", ip, t0), Refusal::Log { not_logged: 0 });
        }
        assert!(r.sources.len() <= MAX_SOURCES);
    }
}
