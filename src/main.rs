//! `secure-tuning`: the command-line face of the library (see [`cli`]).

mod cli;

/// Tensors are large, short-lived buffers; glibc hands each back to the kernel and page-faults it
/// in again, and mimalloc took about 20% off the default model's CPU forward
/// ([`reuse_freed_memory`] says how it is set up).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_decommits`' place in `mi_option_t` (`mimalloc.h`, the same in mimalloc v2
/// and v3), which the Rust bindings do not name.
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Lets memory that tensors free be reused without the kernel zero-filling it again. A training
/// step frees and allocates gigabytes (activations, every gradient). By default mimalloc purges
/// freed memory by decommitting it, so each new touch page-faults and the kernel clears the
/// page: a quarter of a qwen2.5-0.5b step's CPU time (docs/performance.md). With purges as resets
/// (`MADV_FREE`) the pages stay mapped until the kernel needs the memory, so the process's
/// resident size stays near its peak while nothing else asks for it. `MIMALLOC_PURGE_DECOMMITS`
/// set in the environment still wins.
fn reuse_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some() {
        return;
    }
    // SAFETY: mimalloc's option calls are thread-safe and take any option index. Reading first
    // checks that index 5 holds a 0/1 flag at its default (1); otherwise it is left alone.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DECOMMITS) == 1 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0);
        }
    }
}

fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`secure-tuning datasets | head`)
    // panics with "failed printing to stdout"; a command-line tool should just stop.
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    secure_tuning::init();
    reuse_freed_memory();
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
