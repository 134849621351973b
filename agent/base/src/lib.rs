//! The few things every layer of the agent shares and that belong to none of them: time as the
//! agent stores and shows it ([`clock`]), store work from async code ([`blocking`]), the process-wide fatal-fault latch ([`Fatal`]), and the
//! error a config section's validation returns ([`InvalidSetting`]).
//!
//! Architecture invariant: this crate depends on no other crate of the agent, and holds no state
//! of a subsystem; what goes here is what two unrelated layers would otherwise each re-implement.

pub mod blocking;
pub mod clock;
mod fatal;
mod setting;

pub use fatal::Fatal;
pub use setting::InvalidSetting;
