//! The VDSM hook, installed as `50_bridge_isolation` in every hook-point directory. A C `main`
//! skips std's runtime start-up, for a faster start; `c_main` does what of it matters.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    bridge_isolation::app::hook::c_main()
}
