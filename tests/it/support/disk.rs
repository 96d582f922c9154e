//! A small tmpfs, for a disk that fills up.

/// A tmpfs mounted for one test, unmounted on drop.
pub(crate) struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    /// `None` (after printing why) where this process may not mount.
    pub(crate) fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs ({}), so the full-disk test did not run",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e}), so the full-disk test did not run");
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Fills the disk to the last byte with another file.
    pub(crate) fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while filler.write_all(&chunk).is_ok() {}
        filler.write_all(&[0u8; 1]).ok();
    }

    pub(crate) fn resize(&self, size: &str) {
        let o = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "remount: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        std::process::Command::new("umount").arg("-l").arg(&self.0).output().ok();
    }
}
