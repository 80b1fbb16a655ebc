//! The scheduler: a queue of pending pods, filter and score plugins, binding.
//!
//! Its core does no I/O and is benchmarkable alone. Filled by the controllers issue.
