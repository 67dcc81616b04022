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
    // A panic is a bug, but even then the user gets one line and exit code 2, not a trace
    // (RUST_BACKTRACE=1 restores the full report).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            eprintln!("error: internal error{at}: {msg}; please report it with the command that caused it");
        }));
    }
    let code = std::panic::catch_unwind(cli::run).unwrap_or(2);
    std::process::exit(code);
}
