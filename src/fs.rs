//! File helpers every layer uses: reading a whole file with an error that names it, atomic
//! writes that never follow a planted link, and the cache folder for imported models and
//! extracted package files.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads a whole file as UTF-8, mapping a missing file to [`Error::MissingFile`] with `hint`.
///
/// ```
/// let err = secure_tuning::fs::read_file("no/such/file.json".as_ref(), "pass an existing file").unwrap_err();
/// assert!(err.to_string().contains("no/such/file.json"));
/// ```
pub fn read_file(path: &Path, hint: &str) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::MissingFile { path: path.to_path_buf(), hint: hint.to_string() })
        }
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
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
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    remove_leftover(&tmp)?;
    // `create_new` fails on anything at the path, a symbolic link included, so nothing outside
    // the folder can be reached through the temporary name.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The temporary name [`write_atomic`] uses for `path`: `<name>.tmp` in the same folder.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}.tmp"))
}

/// Removes whatever is at `path` (a file or a link, not what it points to); nothing there is fine.
pub(crate) fn remove_leftover(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
        }
        Ok(_) => std::fs::remove_file(path).map_err(|source| Error::Io { path: path.to_path_buf(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
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

/// Creates `dir` and its parents, with an error that names it.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })
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
