//! Files written whole or not at all: secrets (PIN files, `credentials.env`) that are never
//! readable by anyone but the owner, not even for an instant, and never seen half-written;
//! and the outputs of `hsm-kms envelope`, which appear under their name only once complete.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Write `data` to `path` with mode 0600, atomically: a new file is created with that mode
/// in the same folder (so the umask never widens it), written and synced, then renamed over
/// `path`, and the folder is synced so the rename survives a crash.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path, 0o600)?;
    f.write_all(data)?;
    f.commit()
}

/// A file written under a temporary name in its destination's folder and renamed to the
/// destination only by [`AtomicFile::commit`]: readers never see it half-written, and a
/// failure (or a drop without commit) removes the temporary file and leaves whatever was at
/// the destination untouched.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// A new temporary file for `dest`, created with `mode` (before the umask) and never
    /// over an existing file: `.<name>.tmp-<pid>-<random>` next to `dest`.
    pub fn create(dest: &Path, mode: u32) -> std::io::Result<AtomicFile> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    /// The temporary file's path (removed unless committed).
    pub fn temporary_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the file, renames it to the destination and syncs the folder, so the complete
    /// file survives a crash.
    pub fn commit(mut self) -> std::io::Result<()> {
        let Some(file) = self.file.take() else {
            return Err(std::io::Error::other("already committed"));
        };
        let done = file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.dest));
        drop(file);
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("already committed"))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file()?.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_from_the_start_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("user.pin");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"secret").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn an_atomic_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        std::fs::write(&p, b"before").unwrap();
        let names = || -> Vec<_> {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        // Dropped without commit: the temporary file goes, the destination is untouched.
        let mut f = AtomicFile::create(&p, 0o640).unwrap();
        f.write_all(b"partial").unwrap();
        assert!(f.temporary_path().exists());
        assert_eq!(names().len(), 2);
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"before");
        assert_eq!(names().len(), 1);
        // Committed: replaced whole, with the mode asked for.
        let mut f = AtomicFile::create(&p, 0o600).unwrap();
        f.write_all(b"after").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"after");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(names().len(), 1);
    }
}
