//! Where entries live: the in-process L1.

mod memory;

pub(crate) use memory::MemoryStore;
