//! Change fan-out: the LISTEN connection and the hub that wakes subscribers.

mod hub;
pub mod listener;

pub use hub::Hub;
