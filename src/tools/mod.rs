//! Commands around the guard that are not the guard: the terminal [`console`] (`status`, `disconnect`), the quick-start [`demo`], `check --print`'s
//! [`effective`] configuration, the `queue` [`operator`] commands, and the `send`/`sink` test
//! [`peer`]s. They use the library's public API and nothing of its internals.

pub mod console;
pub mod demo;
pub mod effective;
pub mod operator;
pub mod peer;
pub mod salvage;
