//! `secure-tuning`: the command-line face of the library (see [`cli`]).

mod cli;

/// Tensors are large, short-lived buffers; glibc hands each back to the kernel and page-faults it
/// in again, and mimalloc took about 20% off the default model's CPU forward
/// (`secure_tuning::reuse_freed_memory` says how it is set up).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`secure-tuning datasets | head`)
    // panics with "failed printing to stdout"; a command-line tool should just stop.
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    secure_tuning::init();
    std::process::exit(cli::run());
}
