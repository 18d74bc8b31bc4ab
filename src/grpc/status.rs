//! The one translation from [`Error`] to a gRPC [`Status`]. Messages that Redis has are Redis's.

use tonic::{Code, Status};

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match e.root() {
            Error::NotInteger | Error::NotFloat => Code::FailedPrecondition,
            Error::Overflow | Error::DecrementOverflow | Error::NanOrInfinity => Code::OutOfRange,
            Error::InvalidArgument(_) | Error::InvalidExpireTime(_) => Code::InvalidArgument,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unavailable(_) | Error::Busy => Code::Unavailable,
            Error::NoSpace => Code::ResourceExhausted,
            Error::Corruption(_) => Code::DataLoss,
            Error::Locked(_) | Error::Io { .. } | Error::Storage(_) | Error::At { .. } => {
                Code::Internal
            }
        };
        Status::new(code, e.to_string())
    }
}
