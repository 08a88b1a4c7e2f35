//! A writer of the cpio "newc" format, the format of a Linux initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst): no `cpio` program needed.

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// The file type bits themselves.
const S_IFMT: u32 = 0o170_000;
/// Length of a newc header: the magic and 13 fields of 8 hex digits.
#[cfg(test)]
const HEADER_LEN: usize = 6 + 13 * 8;

/// An archive being built in memory; every entry is owned by root with mtime 0.
#[derive(Default)]
pub(crate) struct Archive {
    /// The bytes written so far.
    out: Vec<u8>,
    /// The next inode number.
    ino: u32,
}

impl Archive {
    /// A directory (its parents must come first).
    pub(crate) fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, S_IFDIR | mode, &[], (0, 0));
    }

    /// A regular file holding `data`.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, data, (0, 0));
    }

    /// A symbolic link to `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
    }

    /// A character device node `major:minor`.
    pub(crate) fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | mode, &[], (major, minor));
    }

    /// The archive with its trailer.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let name_len = path.len() as u32 + 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_len,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Pads to a multiple of four bytes.
    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_headers_padded_to_four_bytes() {
        let mut a = Archive::default();
        a.dir("bin", 0o755);
        a.file("init", 0o755, b"#!/bin/sh\n");
        a.symlink("bin/sh", "busybox");
        a.char_device("dev/console", 0o600, 5, 1);
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        // Header of "init": inode 2, regular file 0755, size 10, name length 5.
        let init = bytes.windows(5).position(|w| w == b"init\0").unwrap();
        let header = std::str::from_utf8(&bytes[init - HEADER_LEN..init]).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(&header[6..14], "00000002");
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "0000000a");
        assert_eq!(&header[94..102], "00000005");
        let data = (init + 5).next_multiple_of(4);
        assert_eq!(&bytes[data..data + 10], b"#!/bin/sh\n");
        let console = bytes.windows(12).position(|w| w == b"dev/console\0").unwrap();
        let header = std::str::from_utf8(&bytes[console - HEADER_LEN..console]).unwrap();
        assert_eq!(&header[14..22], "00002180");
        assert_eq!((&header[78..86], &header[86..94]), ("00000005", "00000001"));
        assert!(bytes.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }
}
