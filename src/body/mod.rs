//! Bodies: the request body buffered for the key, the response body streamed
//! to the caller.

mod request;
mod response;

pub use request::RequestBody;
pub(crate) use request::{buffer, Buffered};
pub use response::ResponseBody;
