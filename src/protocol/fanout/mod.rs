//! The fan-out runtime, in one place: the hub that wakes readers (fed by local pushes and by
//! the LISTEN task), each collection's shared tail, the Subscribe stream loop and the stream
//! limits. The notification format itself belongs to the store
//! (`store::postgres::notify`).

mod hub;
pub mod listener;
pub mod shared;
pub mod stream;
pub mod stream_limits;
pub mod tail;

pub use hub::Hub;
