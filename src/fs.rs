//! File helpers every layer uses, and the file policy they enforce (docs/hardening.md):
//! inputs are read only from regular files of bounded size (a FIFO, a device or a link to one is
//! refused, not waited on or read forever); writes go through a temporary file or folder and a
//! rename, never through a link planted at the temporary name; an output folder is claimed with
//! a lock file before any work starts, so a second writer or an unwritable path is caught at
//! once, not after an hour of training.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The largest input file read whole: configs, tokenizers, data sets, results (512 MiB).
pub const MAX_INPUT_BYTES: u64 = 512 << 20;

/// Checks that `path` (links followed) is a regular file of at most `limit` bytes and returns
/// its size.
///
/// ```
/// let err = secure_tuning::fs::check_regular_file("/dev/zero".as_ref(), 1 << 20).unwrap_err();
/// assert!(err.to_string().contains("not a regular file"));
/// ```
pub fn check_regular_file(path: &Path, limit: u64) -> Result<u64> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingFile { path: path.to_path_buf(), hint: "pass an existing file".into() })
        }
        Err(source) => return Err(Error::Read { path: path.to_path_buf(), source }),
    };
    if !meta.is_file() {
        return Err(Error::invalid(
            format!("`{}`", path.display()),
            "is not a regular file (a folder, a FIFO or a device); pass a file",
        ));
    }
    if meta.len() > limit {
        return Err(Error::invalid(
            format!("`{}`", path.display()),
            format!("is {} MiB, more than the {} MiB this input may have", meta.len() >> 20, limit >> 20),
        ));
    }
    Ok(meta.len())
}

/// Reads a whole regular file (at most [`MAX_INPUT_BYTES`]); a missing file is
/// [`Error::MissingFile`] with `hint`.
pub fn read_bytes(path: &Path, hint: &str) -> Result<Vec<u8>> {
    let size = check_regular_file(path, MAX_INPUT_BYTES).map_err(|e| match e {
        Error::MissingFile { path, .. } => Error::MissingFile { path, hint: hint.to_string() },
        e => e,
    })?;
    let mut bytes = Vec::with_capacity(size as usize);
    let file = std::fs::File::open(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    // The size may have grown since it was checked: read one byte past the limit to notice.
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(Error::invalid(format!("`{}`", path.display()), "grew past the input size limit while read"));
    }
    Ok(bytes)
}

/// Reads a whole regular text file: UTF-8 (a leading byte-order mark is dropped), at most
/// [`MAX_INPUT_BYTES`]. Invalid UTF-8 is an error naming the line; a missing file is
/// [`Error::MissingFile`] with `hint`.
///
/// ```
/// let err = secure_tuning::fs::read_file("no/such/file.json".as_ref(), "pass an existing file").unwrap_err();
/// assert!(err.to_string().contains("no/such/file.json"));
/// ```
pub fn read_file(path: &Path, hint: &str) -> Result<String> {
    let bytes = read_bytes(path, hint)?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match std::str::from_utf8(body) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let line = body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(Error::malformed(path, format!("line {line} is not valid UTF-8; save the file as UTF-8")))
        }
    }
}

/// Reads a JSON file into `T`; `what` names what the file should hold, for the error
/// ("`runs/a.json` is malformed: not a robustness.json written by `secure-tuning robustness`").
///
/// ```
/// let err = secure_tuning::fs::read_json::<Vec<u32>>("no/such.json".as_ref(), "a list").unwrap_err();
/// assert!(err.to_string().contains("no/such.json"));
/// ```
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = read_file(path, &format!("pass {what}"))?;
    serde_json::from_str(&text).map_err(|e| Error::malformed(path, format!("not {what} ({e})")))
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::invalid(format!("`{}`", path.display()), format!("cannot be written as JSON: {e}")))?;
    write_atomic(path, &json)
}

/// Writes `bytes` to `path` atomically: into a fresh temporary file beside it, then a rename,
/// so a reader never sees half a file. A file or link already at the temporary name (a crash's
/// leftover, or one planted there) is removed first, never written through.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// secure_tuning::fs::write_atomic(&dir.path().join("a.json"), b"{}")?;
/// assert_eq!(std::fs::read(dir.path().join("a.json"))?, b"{}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    remove_leftover(&tmp)?;
    // `create_new` fails on anything at the path, a symbolic link included, so nothing outside
    // the folder can be reached through the temporary name.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(failed(&tmp))?;
    file.write_all(bytes).map_err(failed(&tmp))?;
    file.sync_all().map_err(failed(&tmp))?;
    drop(file);
    rename(&tmp, path)
}

/// The temporary name [`write_atomic`] uses for `path`: `<name>.tmp` in the same folder.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}.tmp"))
}

/// Removes whatever is at `path` (a file, a folder, or a link, not what it points to); nothing
/// there is fine.
pub(crate) fn remove_leftover(path: &Path) -> Result<()> {
    let failed = |source| Error::Write { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(failed),
        Ok(_) => std::fs::remove_file(path).map_err(failed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(failed(source)),
    }
}

/// Renames `from` to `to`, with an error that names `to`.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::Write { path: to.to_path_buf(), source })
}

/// Creates `dir` and its parents, with an error that names it.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_path_buf(), source })
}

/// Where imported models and extracted package files are kept: `SECURE_TUNING_CACHE`, else
/// `<system temp>/secure-tuning`.
///
/// ```
/// assert!(secure_tuning::fs::cache_dir().is_absolute() || std::env::var_os("SECURE_TUNING_CACHE").is_some());
/// ```
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SECURE_TUNING_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("secure-tuning"))
}

/// Where the project's shipped `data/` folder is: this crate's `data/` (its path at compile
/// time, so it also works when the crate is a path dependency of a notebook), or, for a binary
/// copied to another machine, `data/` under `SECURE_TUNING_HOME` or in the working directory.
pub(crate) fn data_home() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    if built.is_dir() {
        return built;
    }
    match std::env::var_os("SECURE_TUNING_HOME") {
        Some(home) => Path::new(&home).join("data"),
        None => PathBuf::from("data"),
    }
}

/// Writes a folder as a whole: `fill` writes the new contents into a hidden sibling
/// (`.NAME.staging-PID`), which then takes `dir`'s place; the previous contents are removed only
/// once the new ones are there. A kill at any moment leaves either the old folder or the new one,
/// never files of two runs mixed. `dir` may hold only files named in `owned` (and a lock file),
/// so nothing of the user's is ever removed.
///
/// ```
/// let root = tempfile::tempdir()?;
/// let dir = root.path().join("report");
/// let write = |name: &'static str| move |d: &std::path::Path| secure_tuning::fs::write_atomic(&d.join(name), b"x");
/// secure_tuning::fs::replace_dir(&dir, &["a.txt", "b.txt"], write("a.txt"))?;
/// secure_tuning::fs::replace_dir(&dir, &["a.txt", "b.txt"], write("b.txt"))?;
/// assert!(!dir.join("a.txt").exists() && dir.join("b.txt").exists());
/// std::fs::write(dir.join("mine.txt"), "keep")?;
/// assert!(secure_tuning::fs::replace_dir(&dir, &["a.txt", "b.txt"], write("a.txt")).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn replace_dir(dir: &Path, owned: &[&str], fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| {
        Error::invalid(format!("`{}`", dir.display()), "is not a folder name; pass a folder such as runs/a")
    })?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut foreign: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE && !owned.contains(&n.as_str()))
            .collect();
        if !foreign.is_empty() {
            foreign.sort();
            return Err(Error::invalid(
                format!("`{}`", dir.display()),
                format!(
                    "holds files this command did not write ({}); pass a new or empty folder",
                    foreign.into_iter().take(5).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    remove_leftover(&staging)?;
    create_dir_all(&staging)?;
    if let Err(e) = fill(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dir.exists() {
        remove_leftover(&old)?;
        rename(dir, &old)?;
        rename(&staging, dir)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        rename(&staging, dir)?;
    }
    Ok(())
}

/// The name of the lock file a running writer keeps in a folder it claimed.
pub const LOCK_FILE: &str = ".secure-tuning.lock";

/// A folder claimed for writing: created (with its parents) and holding a lock file with this
/// process's id until the claim is dropped. Claiming checks at once that the folder can be
/// written, and refuses a folder another live process has claimed.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let out = dir.path().join("run");
/// let claim = secure_tuning::fs::Claim::new(&out, "--out")?;
/// assert!(secure_tuning::fs::Claim::new(&out, "--out").unwrap_err().to_string().contains("already claimed"));
/// drop(claim);
/// assert!(secure_tuning::fs::Claim::new(&out, "--out").is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Claim {
    dir: PathBuf,
}

impl Claim {
    /// Claims `dir` for this process; `what` names the input (`--out`, `checkpoint dir`) in
    /// errors.
    pub fn new(dir: &Path, what: &str) -> Result<Self> {
        if let Ok(meta) = std::fs::metadata(dir) {
            if !meta.is_dir() {
                return Err(Error::invalid(
                    format!("{what} `{}`", dir.display()),
                    "exists and is not a folder; pass a folder (it is created if missing)",
                ));
            }
        }
        create_dir_all(dir)?;
        let lock = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(mut file) => {
                    file.write_all(std::process::id().to_string().as_bytes())
                        .map_err(|source| Error::Write { path: lock.clone(), source })?;
                    return Ok(Claim { dir: dir.to_path_buf() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&lock).ok().and_then(|s| s.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if pid != std::process::id() && process_alive(pid) => {
                            return Err(Error::invalid(
                                format!("{what} `{}`", dir.display()),
                                format!(
                                    "another run (process {pid}) is writing there; wait for it to finish or pick another folder"
                                ),
                            ))
                        }
                        Some(pid) if pid == std::process::id() => {
                            return Err(Error::invalid(
                                format!("{what} `{}`", dir.display()),
                                "is already claimed by this run for another purpose; pick another folder",
                            ))
                        }
                        // A crashed run's lock: take the folder over.
                        _ => remove_leftover(&lock)?,
                    }
                }
                Err(source) => return Err(Error::Write { path: lock.clone(), source }),
            }
        }
        Err(Error::invalid(format!("{what} `{}`", dir.display()), "its lock file could not be taken"))
    }

    /// The claimed folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
    }
}

/// Whether a process with this id runs (on Linux, from /proc; elsewhere assumed alive, so a
/// stale lock must be removed by hand).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Shortens a user's text for an error message: at most `max` characters, with `...` and the
/// full length when cut.
///
/// ```
/// assert_eq!(secure_tuning::fs::excerpt("short", 10), "\"short\"");
/// assert_eq!(secure_tuning::fs::excerpt(&"x".repeat(100), 4), "\"xxxx...\" (100 characters)");
/// ```
pub fn excerpt(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(max).collect();
        format!("{:?} ({n} characters)", format!("{head}..."))
    }
}
