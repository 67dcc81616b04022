//! With the `cuda` feature, compiles the crate's own CUDA kernels (src/kernels/*.cu) to
//! PTX with nvcc (from CUDA_HOME, CUDA_ROOT or PATH), for the compute capability in
//! CUDA_COMPUTE_CAP (default 80). Without the feature it does nothing.

fn main() {
    println!("cargo:rerun-if-changed=src/kernels/adamw.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = ["CUDA_HOME", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| std::path::Path::new(&root).join("bin/nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "src/kernels/adamw.cu", "-o"])
        .arg(out.join("adamw.ptx"))
        .status()
        .unwrap_or_else(|e| panic!("could not run {} ({e}); set CUDA_HOME to a CUDA toolkit", nvcc.display()));
    assert!(status.success(), "nvcc failed on src/kernels/adamw.cu");
}
