//! `libdgpo`: the C ABI of the dgpo agent runtime (see `include/dgpo.h`).
//!
//! This first cut exposes the library version; the agent entry points follow.

use std::ffi::c_char;

/// The library version as a static NUL-terminated string. Never free it.
#[unsafe(no_mangle)]
pub extern "C" fn dgpo_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
