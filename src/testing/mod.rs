//! Test-only helpers shared by every kind's tests.
//!
//! - [`arbitrary`]: wide proptest strategies: any JSON, mutated samples of
//!   every kind, any time, and every observation a planner takes.
//! - `no_panic`: no input makes a CRD type, a planner or a pure helper
//!   panic.
//! - `receivers`: no receiver answer (status, headers, Retry-After, body)
//!   makes delivery outcome handling panic, over a real socket too.

pub mod arbitrary;

mod no_panic;
mod receivers;
