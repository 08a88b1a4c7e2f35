//! Deciding whether a test that needs root and the lab's programs may run here.

use super::tools::missing_tools;

/// Environment variable that turns a skipped root test into a failure (CI sets it to 1).
pub const REQUIRE_ROOT_TESTS: &str = "BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS";

/// Why a root test cannot run here, or None when it can.
pub fn root_test_obstacle() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".to_string());
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        return Some(format!("missing programs: {}", missing.join(", ")));
    }
    None
}

/// Whether root test `test` may run. When it may not, prints why and returns false, or
/// panics (failing the test) if `BRIDGE_ISOLATION_REQUIRE_ROOT_TESTS=1`.
///
/// ```ignore
/// if !lab::root_tests_enabled("isolation_blocks_vm_to_vm") { return; }
/// ```
pub fn root_tests_enabled(test: &str) -> bool {
    tests_enabled_unless(test, root_test_obstacle())
}

/// Whether test `test` may run, given `obstacle` (why it cannot, if anything stops it):
/// like [`root_tests_enabled`] for any obstacle.
///
/// ```ignore
/// let obstacle = lab::root_test_obstacle().or_else(lab::virt::obstacle);
/// if !lab::tests_enabled_unless("guests_are_isolated", obstacle) { return; }
/// ```
pub fn tests_enabled_unless(test: &str, obstacle: Option<String>) -> bool {
    let Some(reason) = obstacle else {
        return true;
    };
    if std::env::var(REQUIRE_ROOT_TESTS).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and {REQUIRE_ROOT_TESTS}=1 forbids skipping");
    }
    eprintln!("skipping {test}: {reason}");
    false
}
