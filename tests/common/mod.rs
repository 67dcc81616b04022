//! Helpers shared by the test crates: reading the pinned PyPI wheels (`.ci/fetch-packages.sh`)
//! and comparing tensors. Each test crate uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The largest absolute element-wise difference of two tensors of one shape, in f32.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let f32 = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    (f32(a) - f32(b)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Says why a test is skipped, on stderr directly so that the test harness does not swallow it.
pub fn skip(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

/// Where the fetched wheels are: `SECURE_TUNING_PYPI_DIR`, else `.ci/cache/pypi`.
pub fn pypi_dir() -> PathBuf {
    std::env::var_os(secure_tuning::assets::pypi::PYPI_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/pypi"))
}
