//! The `Runtime` trait with its `wasm` (wasmtime) and `oci` (libcontainer) backends and
//! the image store.
//!
//! Knows pods as specs and never talks to the API server. Filled by the node issue.
