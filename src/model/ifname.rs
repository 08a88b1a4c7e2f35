//! Linux interface names as the kernel accepts them.

/// The kernel's IFNAMSIZ minus the terminating NUL.
pub const MAX_LEN: usize = 15;

/// Characters of a payload string shown in a message before it is cut.
const SHOWN: usize = 32;

/// `text` from a payload, quoted for a one-line message: escaped as `{:?}` does (no control
/// characters reach the log) and cut after a few dozen characters, with its length.
pub fn quoted(text: &str) -> String {
    if text.chars().count() <= SHOWN {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(SHOWN).collect();
    format!("{head:?}... ({} bytes)", text.len())
}

/// `text` (already escaped, e.g. JSON) cut for a one-line message, with its length.
pub fn cut(text: &str) -> String {
    if text.chars().count() <= 2 * SHOWN {
        return text.to_string();
    }
    let head: String = text.chars().take(2 * SHOWN).collect();
    format!("{head}... ({} bytes)", text.len())
}

/// Checks that `name` is a usable Linux interface name: 1-15 bytes, no '/', no
/// whitespace, no ':' (alias syntax), not "." or "..", and nothing outside
/// printable ASCII (which also keeps shell metacharacters like `;` `$` `` ` `` and quotes out).
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > MAX_LEN {
        return Err(format!(
            "interface name {} is longer than {MAX_LEN} bytes",
            quoted(name)
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {} is not allowed", quoted(name)));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+');
    if let Some(c) = name.chars().find(|&c| !ok(c)) {
        return Err(format!("interface name {} contains {c:?}", quoted(name)));
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

    #[test]
    fn messages_quote_and_cut_payload_text() {
        assert_eq!(super::quoted("red"), "\"red\"");
        assert_eq!(super::quoted("a\nb\u{1b}"), "\"a\\nb\\u{1b}\"");
        let long = "x".repeat(5000);
        let q = super::quoted(&long);
        assert_eq!(q, format!("\"{}\"... (5000 bytes)", "x".repeat(32)));
        assert!(validate(&long).unwrap_err().len() < 100);
    }
}
