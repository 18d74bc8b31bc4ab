//! Generated protobuf types, client and server for `tally.v1`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("tally.v1");
