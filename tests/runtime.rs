//! The runtime under every command: CPU threading settled by `init`, CPU work on rayon's pool,
//! device selection, and the fused inference decoder computing what the training decoder computes.

use candle_core::Device;
use secure_tuning::model::{parse_device, Batch, Capture, LogitsMode};
use secure_tuning::Model;

mod common;
use common::max_abs_diff;

#[test]
fn init_settles_candles_cpu_threading() {
    // `configure_cpu_threads`: unset, candle re-reads /proc/cpuinfo on every matmul and its
    // element-wise pool spins. Other tests may call `init` meanwhile; they set the same values,
    // so the assertions hold either way.
    let before = |name| std::env::var(name).ok();
    let (threads, spin) = (before("RAYON_NUM_THREADS"), before("CANDLE_BARRIER_POOL_SPIN_LIMIT"));
    let candle_pick = candle_core::utils::get_num_threads().to_string();
    secure_tuning::init();
    let after = |name| std::env::var(name).unwrap_or_else(|_| panic!("init leaves {name} set"));
    assert_eq!(after("RAYON_NUM_THREADS"), threads.unwrap_or(candle_pick));
    assert_eq!(after("CANDLE_BARRIER_POOL_SPIN_LIMIT"), spin.unwrap_or("1".into()));
}

/// How many times the calling thread has slept (given up its core voluntarily) so far.
#[cfg(target_os = "linux")]
fn times_this_thread_slept() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn cpu_work_runs_on_rayons_pool_not_one_hand_off_per_matmul() {
    // `run_on_cpu_pool`: called from outside rayon's pool, each of candle's matmuls would put
    // this thread to sleep until the workers finish it (hundreds of times per step here).
    use secure_tuning::model::{GenerateOptions, LoraConfig, ModuleSet};
    use secure_tuning::train::{Example, TrainConfig, TrainStep};
    use secure_tuning::tune::MlLr;
    let mut model = Model::load("default").unwrap();
    let lora = LoraConfig::new(4, 8.0);
    model.add_lora(&lora).unwrap();
    let plan = MlLr::builder().robust(ModuleSet::attn(model.config().num_layers)).lora_config(lora).build().unwrap();
    let train = TrainConfig { groups: plan.groups(&model, 1).unwrap(), ..TrainConfig::default() };
    let mut stepper = TrainStep::new(&mut model, &train).unwrap();
    let example = Example { ids: (1..65).collect(), loss_start: 1 };
    let batch = Batch::from_sequences(std::slice::from_ref(&example.ids), 0, &Device::Cpu).unwrap();
    let opts = GenerateOptions { max_new_tokens: 8, ..GenerateOptions::default() };

    let slept = times_this_thread_slept();
    let outcome = stepper.step(&model, &[vec![&example]], 0, 1e-4, false).unwrap();
    model.forward(&batch, &Capture::residual()).unwrap();
    model.generate(&example.ids[..8], &opts).unwrap();
    let slept = times_this_thread_slept() - slept;
    assert!(outcome.loss.is_finite());
    // One wait per call (three), with room for a lock or a page fault; not one per matmul.
    assert!(slept <= 12, "the calling thread slept {slept} times");
}

#[test]
fn device_names_parse_or_say_what_is_wrong() {
    assert!(parse_device("cpu").unwrap().is_cpu());
    assert!(parse_device("auto").is_ok());
    let e = parse_device("tpu:0").unwrap_err().to_string();
    assert!(e.contains("expected auto, cpu, cuda or cuda:N"), "{e}");
    #[cfg(not(feature = "cuda"))]
    {
        let e = parse_device("cuda:1").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}

#[test]
fn fused_inference_and_training_decoders_agree() {
    // Mistral's fixture has a sliding window; a padded batch exercises every mask branch.
    for fixture in ["mistral", "qwen2", "llama3"] {
        let mut model = Model::load_dir(format!("tests/fixtures/{fixture}")).unwrap();
        let seqs = vec![(1..40).collect::<Vec<u32>>(), (5..20).collect()];
        let batch = Batch::from_sequences(&seqs, 0, &Device::Cpu).unwrap();
        let capture = Capture::residual().with_logits(LogitsMode::All);
        let fused = model.forward(&batch, &capture).unwrap();
        let names: Vec<String> = model.weights().keys().cloned().collect();
        model.make_trainable(&names).unwrap();
        let composed = model.forward_train(&batch, &capture).unwrap();
        // Compare the real (unpadded) positions of the short row and all of the long one.
        let (f, c) = (fused.logits().unwrap(), composed.logits().unwrap());
        assert!(max_abs_diff(&f.get(0).unwrap(), &c.get(0).unwrap()) < 1e-4, "{fixture}");
        assert!(
            max_abs_diff(&f.get(1).unwrap().narrow(0, 0, 15).unwrap(), &c.get(1).unwrap().narrow(0, 0, 15).unwrap())
                < 1e-4,
            "{fixture}"
        );
        for (a, b) in fused.hidden_states().unwrap().iter().zip(composed.hidden_states().unwrap()) {
            assert!(max_abs_diff(&a.get(0).unwrap(), &b.get(0).unwrap()) < 1e-4, "{fixture} hidden states");
        }
    }
}
