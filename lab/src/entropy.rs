//! Random numbers for probe nonces and temporary names, from the kernel's getrandom(2).

use std::time::{SystemTime, UNIX_EPOCH};

/// A random 64-bit number.
///
/// Falls back to a clock-and-counter mix if getrandom(2) fails, which is good enough for
/// nonces and names that are also checked for collisions.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return u64::from_ne_bytes(buf);
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// `len` random characters from the alphabet Python's `tempfile` uses (a-z, 0-9, `_`).
pub(crate) fn random_name(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
    let mut out = String::with_capacity(len);
    let mut bits = random_u64();
    for i in 0..len {
        if i % 10 == 0 && i > 0 {
            bits = random_u64();
        }
        out.push(ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char);
        bits /= ALPHABET.len() as u64;
    }
    out
}
