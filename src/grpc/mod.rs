//! The gRPC edge: the only module that sees tonic and prost types. Handlers validate the request
//! with a pure function, call the engine, wait for the WAL to acknowledge, and translate errors
//! in one place (`status`).

mod ceiling;
mod convert;
mod incoming;
mod once;
pub mod pb;
mod service;
mod status;
mod validate;

pub use ceiling::serve_ceiling;
pub use incoming::{incoming, refuse_over_limit};
pub use service::Service;

/// The encoded descriptor set of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
