//! Helpers shared by the tests that read the pinned PyPI wheels (`.ci/fetch-packages.sh`).

use std::path::{Path, PathBuf};

/// Says why a test is skipped, on stderr directly so that the test harness does not swallow it.
pub fn skip(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

/// Where the fetched wheels are: `SECURE_TUNING_PYPI_DIR`, else `.ci/cache/pypi`.
pub fn pypi_dir() -> PathBuf {
    std::env::var_os(secure_tuning::pypi::PYPI_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/pypi"))
}
