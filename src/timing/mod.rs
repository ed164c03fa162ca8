//! How long to wait: the jittered [`backoff`] every retry loop uses (dialer, upstream connects,
//! custody drainers) and the [`deadline_timer`] that keeps one timer per connection instead of
//! one per message. Must not know what is being waited for.

pub mod backoff;
pub mod deadline_timer;
