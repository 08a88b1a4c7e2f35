//! Linux interface names as the kernel accepts them.

/// The kernel's IFNAMSIZ minus the terminating NUL.
pub const MAX_LEN: usize = 15;

/// Checks that `name` is a usable Linux interface name: 1-15 bytes, no '/', no
/// whitespace, no ':' (alias syntax), not "." or "..", and nothing outside
/// printable ASCII (which also keeps shell metacharacters like `;` `$` `` ` `` and quotes out).
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > MAX_LEN {
        return Err(format!("interface name {name:?} is longer than {MAX_LEN} bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+');
    if let Some(c) = name.chars().find(|&c| !ok(c)) {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_real_names() {
        for n in [
            "ovirtmgmt",
            "eth0",
            "bond0.100",
            "ens3f0",
            "vnet12",
            "red-net_1",
            "a234567890abcde",
        ] {
            assert!(validate(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for n in [
            "",
            "a234567890abcdef",
            "a/b",
            "a b",
            "a\tb",
            "..",
            ".",
            "x;rm",
            "x$(id)",
            "x`id`",
            "a:1",
            "é",
            "x'y",
        ] {
            assert!(validate(n).is_err(), "{n:?}");
        }
    }
}
