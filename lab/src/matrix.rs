//! The reachability matrix: which protocol gets from which endpoint to which.

use std::collections::BTreeMap;
use std::fmt;

/// A kind of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `ping` to the destination's IPv4 address (needs ARP both ways).
    Ipv4,
    /// `ping` to the destination's IPv6 link-local address (needs neighbour discovery).
    Ipv6,
    /// An ARP request for the destination's address, answered by the destination.
    Arp,
    /// A unicast frame of ethertype 0x88B5 whose nonce reaches the destination.
    Raw,
}

impl Protocol {
    /// Every protocol, in column order.
    pub const ALL: [Protocol; 4] = [Protocol::Ipv4, Protocol::Ipv6, Protocol::Arp, Protocol::Raw];

    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Ipv4 => "IPv4",
            Protocol::Ipv6 => "IPv6",
            Protocol::Arp => "ARP",
            Protocol::Raw => "RAW",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Results of probes keyed by (source, destination, protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matrix {
    /// Endpoint names, in row order.
    endpoints: Vec<String>,
    /// Pass (true) or blocked (false) per probe run.
    results: BTreeMap<(String, String, Protocol), bool>,
}

impl Matrix {
    /// An empty matrix over `endpoints` (their order is the row order).
    pub fn new(endpoints: Vec<String>) -> Matrix {
        Matrix {
            endpoints,
            results: BTreeMap::new(),
        }
    }

    /// Records one probe result.
    pub fn set(&mut self, src: &str, dst: &str, proto: Protocol, pass: bool) {
        self.results.insert((src.to_string(), dst.to_string(), proto), pass);
    }

    /// Whether the probe passed; false when it was not run.
    pub fn get(&self, src: &str, dst: &str, proto: Protocol) -> bool {
        self.outcome(src, dst, proto).unwrap_or(false)
    }

    /// The probe's result, or None when it was not run.
    pub fn outcome(&self, src: &str, dst: &str, proto: Protocol) -> Option<bool> {
        self.results.get(&(src.to_string(), dst.to_string(), proto)).copied()
    }

    /// Endpoint names, in row order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Every ordered pair (src, dst) with src != dst, in row order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for src in &self.endpoints {
            for dst in &self.endpoints {
                if src != dst {
                    pairs.push((src.clone(), dst.clone()));
                }
            }
        }
        pairs
    }

    /// Whether every probe of the matrix passed.
    pub fn all_pass(&self) -> bool {
        self.pairs()
            .iter()
            .all(|(s, d)| Protocol::ALL.iter().all(|p| self.get(s, d, *p)))
    }

    /// Checks every protocol of every pair against `should_pass(src, dst)`; on mismatch
    /// returns one line per wrong probe, then the whole table.
    pub fn expect(&self, should_pass: &dyn Fn(&str, &str) -> bool) -> Result<(), String> {
        self.expect_each(&|src, dst, _| should_pass(src, dst))
    }

    /// As [`Matrix::expect`], with an expectation per protocol (a one-way filter lets the
    /// raw frame through where a ping needs the answer too).
    pub fn expect_each(&self, should_pass: &dyn Fn(&str, &str, Protocol) -> bool) -> Result<(), String> {
        self.expect_each_of(&Protocol::ALL, should_pass)
    }

    /// As [`Matrix::expect_each`], on `protocols` only (a matrix measured without the
    /// others, such as one probed from inside real guests).
    pub fn expect_each_of(
        &self,
        protocols: &[Protocol],
        should_pass: &dyn Fn(&str, &str, Protocol) -> bool,
    ) -> Result<(), String> {
        let mut wrong = Vec::new();
        for (src, dst) in self.pairs() {
            for &proto in protocols {
                let want = should_pass(&src, &dst, proto);
                let got = self.outcome(&src, &dst, proto);
                if got != Some(want) {
                    wrong.push(format!(
                        "{src} -> {dst} {proto}: expected {}, got {}",
                        word(want),
                        got.map_or("not probed", word)
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} probe(s) differ:\n{}\n\n{self}",
            wrong.len(),
            wrong.join("\n")
        ))
    }

    /// Panics with the report of [`Matrix::expect`] if any probe differs: for tests, where
    /// `unwrap()` would print the report with escaped newlines.
    pub fn assert_expected(&self, should_pass: &dyn Fn(&str, &str) -> bool) {
        if let Err(report) = self.expect(should_pass) {
            panic!("{report}");
        }
    }

    /// Panics with the report of [`Matrix::expect_each`] if any probe differs.
    pub fn assert_each(&self, should_pass: &dyn Fn(&str, &str, Protocol) -> bool) {
        if let Err(report) = self.expect_each(should_pass) {
            panic!("{report}");
        }
    }

    /// Panics with the report of [`Matrix::expect_each_of`] if any probe of `protocols`
    /// differs from `should_pass(src, dst)`.
    pub fn assert_expected_of(&self, protocols: &[Protocol], should_pass: &dyn Fn(&str, &str) -> bool) {
        if let Err(report) = self.expect_each_of(protocols, &|src, dst, _| should_pass(src, dst)) {
            panic!("{report}");
        }
    }
}

/// `pass` or `blocked`.
fn word(pass: bool) -> &'static str {
    if pass {
        "pass"
    } else {
        "blocked"
    }
}

impl fmt::Display for Matrix {
    /// One row per ordered pair, one column per protocol:
    ///
    /// ```text
    /// pair          IPv4     IPv6     ARP      RAW
    /// vm1 -> vm2    pass     blocked  blocked  blocked
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = self.pairs();
        let labels: Vec<String> = pairs.iter().map(|(s, d)| format!("{s} -> {d}")).collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0).max(4);
        let mut header = format!("{:width$}", "pair");
        for proto in Protocol::ALL {
            header.push_str(&format!("  {:8}", proto.label()));
        }
        writeln!(f, "{}", header.trim_end())?;
        for ((src, dst), label) in pairs.iter().zip(&labels) {
            let mut line = format!("{label:width$}");
            for proto in Protocol::ALL {
                let cell = self.outcome(src, dst, proto).map_or("-", word);
                line.push_str(&format!("  {cell:8}"));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::is_vm;
    use super::*;

    fn isolated() -> Matrix {
        let mut m = Matrix::new(vec!["vm1".into(), "vm2".into(), "gw".into()]);
        for (s, d) in m.pairs() {
            for p in Protocol::ALL {
                m.set(&s, &d, p, !(is_vm(&s) && is_vm(&d)));
            }
        }
        m
    }

    #[test]
    fn renders_one_row_per_ordered_pair() {
        let text = isolated().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[0], "pair        IPv4      IPv6      ARP       RAW");
        assert_eq!(lines[1], "vm1 -> vm2  blocked   blocked   blocked   blocked");
        assert_eq!(lines[2], "vm1 -> gw   pass      pass      pass      pass");
    }

    #[test]
    fn expect_lists_every_mismatch() {
        let mut m = isolated();
        assert_eq!(m.expect(&|a, b| !(is_vm(a) && is_vm(b))), Ok(()));
        assert!(!m.all_pass());
        m.set("vm2", "vm1", Protocol::Arp, true);
        let err = m.expect(&|a, b| !(is_vm(a) && is_vm(b))).unwrap_err();
        assert!(err.starts_with("1 probe(s) differ:\nvm2 -> vm1 ARP: expected blocked, got pass\n"));
        let err = m.expect(&|_, _| true).unwrap_err();
        assert!(err.starts_with("7 probe(s) differ:"), "{err}");
        assert!(err.contains("vm1 -> vm2 RAW: expected pass, got blocked"));
    }

    #[test]
    #[should_panic(expected = "vm1 -> vm2 IPv4: expected pass, got blocked")]
    fn assert_expected_panics_with_the_report() {
        isolated().assert_expected(&|_, _| true);
    }

    #[test]
    fn expect_each_of_ignores_the_other_protocols() {
        let mut m = Matrix::new(vec!["a".into(), "b".into()]);
        for (s, d) in m.pairs() {
            m.set(&s, &d, Protocol::Ipv4, true);
            m.set(&s, &d, Protocol::Arp, false);
        }
        assert_eq!(m.expect_each_of(&[Protocol::Ipv4], &|_, _, _| true), Ok(()));
        let err = m
            .expect_each_of(&[Protocol::Ipv4, Protocol::Arp], &|_, _, _| true)
            .unwrap_err();
        assert!(
            err.starts_with("2 probe(s) differ:\na -> b ARP: expected pass, got blocked"),
            "{err}"
        );
        assert!(m
            .expect(&|_, _| true)
            .unwrap_err()
            .contains("IPv6: expected pass, got not probed"));
    }

    #[test]
    fn unprobed_cells_are_reported() {
        let m = Matrix::new(vec!["a".into(), "b".into()]);
        assert!(!m.get("a", "b", Protocol::Ipv4));
        let err = m.expect(&|_, _| true).unwrap_err();
        assert!(err.contains("a -> b IPv4: expected pass, got not probed"));
        assert!(m.to_string().contains("a -> b  -"));
    }
}
