//! A reachability matrix measured from inside real guests (and from lab namespaces).
//!
//! Every station runs `bi probe IFACE TARGET...` of `guest.sh` against every other station
//! at once: a guest through its console, a lab namespace (gateway, host) with
//! `ip netns exec NS busybox sh guest.sh probe ...`, so both sides use the same busybox
//! `ping` and `arping`. Each prints `R NAME ipv4|ipv6|arp 1|0` per target and protocol; a
//! failed probe was tried twice. The raw-ethertype probe of the netns lab has no busybox
//! counterpart: that column stays unprobed.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::console::GuestConsole;
use super::image::BUSYBOX;
use crate::mac::{link_local, Mac};
use crate::matrix::{Matrix, Protocol};
use crate::tools::{run_ok, IP};

/// The protocols a guest probes.
pub const GUEST_PROTOCOLS: [Protocol; 3] = [Protocol::Ipv4, Protocol::Ipv6, Protocol::Arp];
/// How long one station's probes may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a station's probes run.
#[derive(Debug)]
pub enum Place<'a> {
    /// In a guest, through its console.
    Guest(&'a mut GuestConsole),
    /// In a lab namespace, with busybox and the script at this path.
    Namespace {
        /// The namespace.
        ns: String,
        /// `guest.sh` written out on the host.
        script: &'a Path,
    },
}

/// One endpoint of the matrix: where it is, and how the others reach it.
#[derive(Debug)]
pub struct Station<'a> {
    /// Endpoint name (`vm1`, `gw`, `host`).
    pub name: String,
    /// Its interface on the bridge's segment (`eth0`, or the bridge for the host).
    pub ifname: String,
    /// Its MAC (its IPv6 link-local address follows, EUI-64).
    pub mac: Mac,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Where its probes run.
    pub place: Place<'a>,
}

impl Station<'_> {
    /// `NAME=IPV4=IPV6` as `bi probe` takes a target.
    fn target(&self) -> String {
        let v6: Ipv6Addr = link_local(self.mac);
        format!("{}={}={v6}", self.name, self.ipv4)
    }
}

/// Probes every ordered pair of `stations` on [`GUEST_PROTOCOLS`], all stations at once.
pub fn measure(stations: &mut [Station]) -> Result<Matrix> {
    let names: Vec<String> = stations.iter().map(|s| s.name.clone()).collect();
    let targets: Vec<String> = stations.iter().map(Station::target).collect();
    let outputs: Vec<Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stations
            .iter_mut()
            .enumerate()
            .map(|(i, station)| {
                let others: Vec<String> = (0..targets.len())
                    .filter(|&j| j != i)
                    .map(|j| targets[j].clone())
                    .collect();
                scope.spawn(move || probe_from(station, &others))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a probing thread panicked"))))
            .collect()
    });
    let mut matrix = Matrix::new(names.clone());
    for (src, output) in names.iter().zip(outputs) {
        let output = output?;
        let seen = record(&mut matrix, src, &output)?;
        let want = (names.len() - 1) * GUEST_PROTOCOLS.len();
        if seen != want {
            bail!("{src}: {seen} probe results instead of {want}:\n{output}");
        }
    }
    Ok(matrix)
}

/// Runs `bi probe` at `station` against `targets`; returns its output.
fn probe_from(station: &mut Station, targets: &[String]) -> Result<String> {
    let ifname = station.ifname.clone();
    match &mut station.place {
        Place::Guest(console) => {
            let line = format!("bi probe {ifname} {}", targets.join(" "));
            console.run_ok(&line, ROUND_TIMEOUT)
        }
        Place::Namespace { ns, script } => {
            let script = script.to_string_lossy().into_owned();
            let mut args = vec!["netns", "exec", ns.as_str(), BUSYBOX, "sh", &script, "probe", &ifname];
            args.extend(targets.iter().map(String::as_str));
            run_ok(IP, &args)
        }
    }
}

/// Records the `R NAME PROTO 1|0` lines of `output` as probes from `src`; returns how many.
fn record(matrix: &mut Matrix, src: &str, output: &str) -> Result<usize> {
    let mut seen = 0;
    for line in output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ["R", dst, proto, verdict] = fields[..] else {
            continue;
        };
        let proto = match proto {
            "ipv4" => Protocol::Ipv4,
            "ipv6" => Protocol::Ipv6,
            "arp" => Protocol::Arp,
            other => bail!("{src}: unknown protocol {other:?} in {line:?}"),
        };
        let pass = match verdict {
            "1" => true,
            "0" => false,
            other => bail!("{src}: bad verdict {other:?} in {line:?}"),
        };
        if matrix.outcome(src, dst, proto).is_some() {
            bail!("{src}: {dst} {proto} reported twice");
        }
        matrix.set(src, dst, proto, pass);
        seen += 1;
    }
    Ok(seen)
}

/// Writes [`super::GUEST_SCRIPT`] to `path`, for [`Place::Namespace`].
pub fn write_script(path: &Path) -> Result<()> {
    std::fs::write(path, super::GUEST_SCRIPT).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_recorded_once_each() {
        let mut m = Matrix::new(vec!["vm1".into(), "vm2".into(), "gw".into()]);
        let out = "/ # noise\nR vm2 ipv4 0\nR vm2 ipv6 0\nR vm2 arp 0\nR gw ipv4 1\nR gw arp 1\nR gw ipv6 1\n";
        assert_eq!(record(&mut m, "vm1", out).unwrap(), 6);
        assert_eq!(m.outcome("vm1", "vm2", Protocol::Arp), Some(false));
        assert_eq!(m.outcome("vm1", "gw", Protocol::Ipv6), Some(true));
        assert_eq!(m.outcome("vm1", "gw", Protocol::Raw), None);
        assert!(record(&mut m, "vm1", "R gw ipv4 1\n").is_err());
        assert!(record(&mut m, "vm2", "R gw icmp 1\n").is_err());
        assert!(record(&mut m, "vm2", "R gw ipv4 yes\n").is_err());
    }

    #[test]
    fn a_target_carries_both_addresses() {
        let script = Path::new("/x");
        let station = Station {
            name: "gw".into(),
            ifname: "eth0".into(),
            mac: [0x02, 0xb1, 0, 0, 0, 0xfe],
            ipv4: Ipv4Addr::new(10, 77, 0, 254),
            place: Place::Namespace { ns: "n".into(), script },
        };
        assert_eq!(station.target(), "gw=10.77.0.254=fe80::b1:ff:fe00:fe");
    }
}
