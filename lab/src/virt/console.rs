//! The command channel of a guest: its second serial port, a unix socket qemu listens on.
//!
//! The guest's `/init` opens ttyS1 once, turns echo off and runs `sh` on it for ever. The
//! test connects, then sends `echo` lines once a second until one comes back (the shell is
//! up: lines sent before it read anything may be lost or run late, which is harmless).
//! Every command then travels as one line framed by numbered markers,
//! `echo @@begin-N; COMMAND; echo @@end-N $?`, and its output is what lies between them:
//! prompts, late echoes and leftovers of earlier lines fall outside.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often the handshake line is sent while the guest boots.
const HANDSHAKE_EVERY: Duration = Duration::from_secs(1);

/// A connected, answering guest shell.
#[derive(Debug)]
pub struct GuestConsole {
    /// The guest's name, for messages.
    name: String,
    /// The socket.
    stream: UnixStream,
    /// Bytes read and not yet consumed.
    pending: Vec<u8>,
    /// Number of the last command sent.
    seq: u64,
}

impl GuestConsole {
    /// Connects to guest `name`'s command socket and waits until its shell answers (at most
    /// `timeout`, boot included).
    pub fn connect(name: &str, socket: &Path, timeout: Duration) -> Result<GuestConsole> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() > timeout => {
                    return Err(e).with_context(|| format!("{name}: cannot connect to {}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let mut console = GuestConsole {
            name: name.to_string(),
            stream,
            pending: Vec::new(),
            seq: 0,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // `$S` keeps an echo of the line itself from looking like the answer.
            console.send(&format!("S=ync; echo @@s$S-{attempt}"))?;
            let until = Instant::now() + HANDSHAKE_EVERY;
            while Instant::now() < until {
                console.read_some(until)?;
                if let Some(at) = find(&console.pending, b"@@sync-") {
                    console.pending.drain(..at + 1);
                    return Ok(console);
                }
            }
            if started.elapsed() > timeout {
                bail!(
                    "{name}: no answer on {} within {timeout:?} (guest not booted?)",
                    socket.display()
                );
            }
        }
    }

    /// Runs `command` (one line) in the guest's shell; returns its exit code and output
    /// (stdout and stderr), waiting at most `timeout`.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        if command.contains('\n') {
            bail!("a guest command is one line: {command:?}");
        }
        self.seq += 1;
        let n = self.seq;
        self.send(&format!("echo @@begin-{n}; {command}; echo @@end-{n} $?"))?;
        let begin = format!("@@begin-{n}\n").into_bytes();
        let end = format!("@@end-{n} ").into_bytes();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = find(&self.pending, &begin) {
                let body = b + begin.len();
                if let Some(e) = find(&self.pending[body..], &end) {
                    let code_at = body + e + end.len();
                    if let Some(nl) = self.pending[code_at..].iter().position(|&c| c == b'\n') {
                        let output = String::from_utf8_lossy(&self.pending[body..body + e]).into_owned();
                        let code_text = String::from_utf8_lossy(&self.pending[code_at..code_at + nl]).into_owned();
                        self.pending.drain(..code_at + nl + 1);
                        let code = code_text
                            .trim()
                            .parse()
                            .with_context(|| format!("{}: bad exit code {code_text:?}", self.name))?;
                        return Ok((code, output));
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: `{command}` did not finish within {timeout:?}; got so far: {:?}",
                    self.name,
                    String::from_utf8_lossy(&self.pending)
                );
            }
            self.read_some(deadline)?;
        }
    }

    /// [`GuestConsole::run`], failing unless the command exits 0; returns its output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let (code, output) = self.run(command, timeout)?;
        if code != 0 {
            bail!("{}: `{command}` exited {code}: {}", self.name, output.trim());
        }
        Ok(output)
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("{}: cannot write to the console", self.name))
    }

    /// Reads what arrives before `until` (at most one read).
    fn read_some(&mut self, until: Instant) -> Result<()> {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(left))
            .context("setting a read timeout")?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => bail!("{}: the console closed (guest gone?)", self.name),
            Ok(n) => {
                // The guest's tty may still turn "\n" into "\r\n" before `stty -onlcr` ran.
                self.pending.extend(buf[..n].iter().filter(|&&b| b != b'\r'));
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("{}: cannot read the console", self.name)),
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A fake guest: answers the handshake after ignoring the first line, then runs
    /// `echo`-only commands the way the guest's shell would, with a prompt and noise.
    fn fake_guest(listener: UnixListener) {
        let (stream, _) = listener.accept().unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut lines = std::io::BufReader::new(stream).lines();
        let _lost = lines.next();
        for line in lines {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("S=ync; echo @@s$S-") {
                write!(out, "/ # @@sync-{n}\r\n").unwrap();
                continue;
            }
            let parts: Vec<&str> = line.split("; ").collect();
            let n = parts[0].trim_start_matches("echo @@begin-");
            let output = parts[1].trim_start_matches("echo ");
            write!(out, "/ # @@begin-{n}\n{output}\n@@end-{n} 3\n").unwrap();
        }
    }

    #[test]
    fn commands_are_framed_by_their_markers() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let guest = std::thread::spawn(move || fake_guest(listener));
        let mut console = GuestConsole::connect("vm1", &socket, Duration::from_secs(10)).unwrap();
        assert_eq!(
            console.run("echo one", Duration::from_secs(5)).unwrap(),
            (3, "one\n".to_string())
        );
        assert_eq!(
            console.run("echo two", Duration::from_secs(5)).unwrap(),
            (3, "two\n".to_string())
        );
        let err = console.run_ok("echo three", Duration::from_secs(5)).unwrap_err();
        assert!(format!("{err:#}").contains("`echo three` exited 3: three"), "{err:#}");
        assert!(console.run("a\nb", Duration::from_secs(1)).is_err());
        drop(console);
        guest.join().unwrap();
    }
}
