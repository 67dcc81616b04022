//! Where CPU work runs: candle's threading defaults settled once per process, and whole
//! passes handed to rayon's pool in one go instead of one hand-off per matmul.

/// Settles two of candle's CPU threading defaults for the process, each only where its
/// environment variable is unset (the measurements are in docs/performance.md):
///
/// - `RAYON_NUM_THREADS` is set to the count candle itself picks. Candle 0.11 looks the count
///   up on every matmul, and with the variable unset the lookup parses `/proc/cpuinfo`:
///   hundreds of reads per training step. With it set, the count is the same and the lookup is
///   one environment read. Rayon's global pool, when it has not started yet, takes that count
///   too (physical cores, where rayon alone would take logical ones).
/// - `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set to 1. Candle's pool for element-wise ops keeps its
///   workers spinning for 25,000 rounds after each op, and the next op is usually a matmul on
///   rayon's threads: the spinning workers take their cores from it. Parked at once, they cost
///   a wake-up per op instead.
///
/// Runs once per process; [`crate::init`] calls it, before anything touches candle.
///
/// ```
/// secure_tuning::kernels::configure_cpu_threads();
/// let threads: usize = std::env::var("RAYON_NUM_THREADS").unwrap().parse().unwrap();
/// assert!(threads >= 1);
/// ```
pub fn configure_cpu_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Rust's own environment reads and writes share a lock; what could race is C code
        // calling getenv on another thread at this moment, and nothing we run does.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
        }
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1");
        }
    });
}

/// Runs `work` on one of rayon's worker threads when `device` is the CPU and the caller is not
/// one already; otherwise (a GPU, or already on a worker) runs it here.
///
/// Candle splits each CPU matmul over rayon's pool. Called from outside the pool, a matmul
/// queues its parts, wakes the workers and puts the caller to sleep until they are done: two
/// thread hand-offs per matmul, hundreds per training step, and on 2 cores a third thread in
/// the way. Called from a worker, the worker runs a part itself (on the default model, the full
/// training step went from 85-99 ms to 69-75 ms). Every forward pass, generation, training
/// step, the probes' fits and the adversarial robustness test run through it.
///
/// ```
/// use secure_tuning::kernels::run_on_cpu_pool;
/// let on_worker = run_on_cpu_pool(&candle_core::Device::Cpu, || rayon::current_thread_index().is_some());
/// assert!(on_worker);
/// ```
pub fn run_on_cpu_pool<R: Send>(device: &candle_core::Device, work: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() && rayon::current_thread_index().is_none() {
        rayon::scope(|_| work())
    } else {
        work()
    }
}
