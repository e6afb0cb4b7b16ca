//! The buffer between the walk and the sink: the walk writes many short
//! pieces (brackets, commas, colons, names), and a hasher pays for each
//! update; they are gathered here and passed on a few kilobytes at a time.
//! Long pieces (a prompt's content) go straight through.

use super::Sink;

/// How many bytes are gathered before they are passed on.
const CAPACITY: usize = 4096;

/// A [`Sink`] that gathers short writes for `out`. Whatever is still
/// gathered is lost unless [`flush`](Buffered::flush) is called: on failure
/// the caller rewinds `out` anyway.
pub(super) struct Buffered<'a, S> {
    out: &'a mut S,
    buffer: Box<[u8; CAPACITY]>,
    len: usize,
}

impl<'a, S: Sink> Buffered<'a, S> {
    pub(super) fn new(out: &'a mut S) -> Self {
        Self {
            out,
            buffer: Box::new([0; CAPACITY]),
            len: 0,
        }
    }

    /// Passes on what is gathered.
    pub(super) fn flush(&mut self) {
        if self.len > 0 {
            self.out
                .put(self.buffer.get(..self.len).unwrap_or_default());
            self.len = 0;
        }
    }
}

impl<S: Sink> Sink for Buffered<'_, S> {
    type Mark = ();

    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() > CAPACITY - self.len {
            self.flush();
            if bytes.len() >= CAPACITY / 2 {
                self.out.put(bytes);
                return;
            }
        }
        if let Some(room) = self.buffer.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    /// Not used: the walk never rewinds, its caller rewinds the sink.
    fn mark(&self) {}

    fn rewind(&mut self, _: ()) {}
}
