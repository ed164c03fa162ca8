//! How long to wait: the jittered [`backoff`] every retry loop uses (dialer, upstream connects,
//! custody drainers), the [`deadline_timer`] that keeps one timer per connection instead of
//! one per message, and [`woken`], which waits for a rare event beside busy work without
//! polling it at every wake-up. Must not know what is being waited for.

pub mod backoff;
pub mod deadline_timer;
pub mod woken;
