//! `Trainer::fit` on a model that is not LLaMA: a user's own two-linear language model, made a
//! `CausalLm` with a short impl, trains (the held-out loss falls), reports its events at the
//! cadence asked, checkpoints and resumes bit for bit; a device failure is an error, not a
//! panic, and a zero cadence is refused before any work.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Module, Param};
use burn::nn::LinearConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Int, Tensor};
use qlora_nf4::QuantConfig;
use qlora_nn::{
    AdaptedLinear, CausalLm, IGNORE_INDEX, LoraApplier, LoraConfig, LoraModel, ModuleKind,
    ModuleSelector,
};
use qlora_train::{
    FitEvent, FitOptions, OptimizerKind, Sample, Schedule, StepRecord, TrainConfig, TrainError,
    Trainer, find_checkpoint, splitmix,
};

const VOCAB: usize = 24;
const HIDDEN: usize = 32;

/// A bigram language model of one's own: a frozen embedding, a QLoRA mixing linear and a
/// QLoRA head. `fail` makes its loss panic, as a device that ran out of memory does.
#[derive(Module, Debug)]
struct TinyLm {
    embed: Param<Tensor<2>>,
    mix: AdaptedLinear,
    head: AdaptedLinear,
    #[module(skip)]
    fail: Arc<AtomicBool>,
    /// Makes the loss panic off the autodiff device only: in evaluation, not in training.
    #[module(skip)]
    fail_eval: Arc<AtomicBool>,
}

impl LoraModel for TinyLm {
    fn linears(&self) -> Vec<(String, &AdaptedLinear)> {
        vec![("mix".into(), &self.mix), ("head".into(), &self.head)]
    }
    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)> {
        vec![
            ("mix".into(), &mut self.mix),
            ("head".into(), &mut self.head),
        ]
    }
}

impl CausalLm for TinyLm {
    fn loss(&self, input_ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1> {
        if self.fail.load(Ordering::SeqCst) {
            panic!("Out of memory: the test asked for it");
        }
        if self.fail_eval.load(Ordering::SeqCst) && !input_ids.device().is_autodiff() {
            panic!("device lost: the test asked for it");
        }
        let [b, t] = input_ids.dims();
        let x = self
            .embed
            .val()
            .select(0, input_ids.reshape([b * t]))
            .reshape([b, t, HIDDEN]);
        let logits = self.head.forward(self.mix.forward(x).tanh());
        let logits = logits.narrow(1, 0, t - 1).reshape([b * (t - 1), VOCAB]);
        let targets = labels.narrow(1, 1, t - 1).reshape([b * (t - 1), 1]);
        let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
        let safe = targets.mask_fill(keep.clone().bool_not(), 0);
        let logp = log_softmax(logits, 1).gather(1, safe);
        let keep = keep.float();
        (logp * keep.clone()).sum().neg() / keep.sum()
    }
    fn device(&self) -> Device {
        self.embed.device()
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn architecture(&self) -> String {
        format!("tiny-lm:vocab={VOCAB},hidden={HIDDEN}")
    }
}

/// Burn's device random generator is shared by the tests of this process: runs take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sequences where each token is the previous one plus one (mod 20, offset 2), prompt half
/// masked.
fn samples(n: usize, seed: u64) -> Vec<Sample> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let len = 8 + (splitmix(&mut s) % 8) as usize;
            let start = (splitmix(&mut s) % 20) as u32;
            let ids: Vec<u32> = (0..len as u32).map(|i| 2 + (start + i) % 20).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < len / 2 { IGNORE_INDEX } else { t as i64 })
                .collect();
            Sample::new(ids, labels)
        })
        .collect()
}

fn trainer(steps: usize, fail: Arc<AtomicBool>) -> Trainer<TinyLm> {
    let device = Device::flex().autodiff();
    device.seed(11);
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.1,
        target_modules: Some(ModuleSelector::List(vec!["mix".into(), "head".into()])),
        task_type: None,
        ..LoraConfig::default()
    };
    let applier = LoraApplier::new(lora.clone(), Some(QuantConfig::qlora()), &device).unwrap();
    let embed = Tensor::<2>::random([VOCAB, HIDDEN], Distribution::Normal(0.0, 1.0), &device);
    let model = TinyLm {
        embed: Param::from_tensor(embed).set_require_grad(false),
        mix: applier
            .linear(
                "mix",
                LinearConfig::new(HIDDEN, HIDDEN).init(&device),
                ModuleKind::Linear,
            )
            .unwrap(),
        head: applier
            .linear(
                "head",
                LinearConfig::new(HIDDEN, VOCAB).init(&device),
                ModuleKind::OutputHead,
            )
            .unwrap(),
        fail,
        fail_eval: Arc::default(),
    };
    let config = TrainConfig {
        steps,
        batch_size: 4,
        grad_accum: 1,
        lr: 2e-2,
        schedule: Schedule::Constant,
        warmup: 0,
        optimizer: OptimizerKind::AdamW,
        seed: 5,
        ..TrainConfig::default()
    };
    Trainer::new(
        model,
        lora,
        "default",
        samples(32, 1),
        samples(8, 2),
        0,
        config,
    )
    .unwrap()
}

fn work(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qlora-fit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An event as a short string, to compare sequences.
fn describe(e: &FitEvent<'_>) -> String {
    match e {
        FitEvent::InitialEval { .. } => "eval0".into(),
        FitEvent::Step(r) => format!("step{}", r.step),
        FitEvent::Eval { step, .. } => format!("eval{step}"),
        FitEvent::Checkpoint { step, .. } => format!("save{step}"),
    }
}

#[test]
fn fit_trains_a_model_of_ones_own_at_the_cadence_asked() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = work("cadence");
    let mut t = trainer(7, Arc::default());
    let mut events = Vec::new();
    let options = FitOptions::new(&out).with_eval_every(3).with_save_every(4);
    let summary = t.fit(&options, |e| events.push(describe(&e))).unwrap();
    assert_eq!(
        events.join(" "),
        "eval0 step1 step2 step3 eval3 step4 save4 step5 step6 eval6 step7 eval7 save7"
    );
    assert_eq!(summary.steps, 7);
    let (first, last) = (
        summary.initial_eval_loss.unwrap(),
        summary.final_eval_loss.unwrap(),
    );
    assert!(last < 0.8 * first, "held-out loss {first} -> {last}");
    assert_eq!(summary.checkpoint, find_checkpoint(&out));
    assert!(summary.tokens > 0 && summary.seconds > 0.0);
    // metrics.jsonl: the held-out loss before training, then one line per step.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[0]["step"], 0);
    // serde_json (without its `float_roundtrip` feature) reads an f64 back to within an ulp.
    let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() <= 1e-15 * x.abs();
    assert!(close(&lines[0]["eval_loss"], first), "{}", lines[0]);
    assert!(close(&lines[7]["eval_loss"], last), "{}", lines[7]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn fit_resumes_a_model_of_ones_own_bit_for_bit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bits = |h: &[StepRecord]| h.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>();
    let mut straight = trainer(6, Arc::default());
    straight.fit(&FitOptions::default(), |_| {}).unwrap();

    // A constant schedule: a run of 3 steps is the first half of the run of 6.
    let out = work("resume");
    let mut first = trainer(3, Arc::default());
    first.fit(&FitOptions::new(&out), |_| {}).unwrap();
    let mut resumed = trainer(6, Arc::default());
    resumed.resume(&find_checkpoint(&out).unwrap()).unwrap();
    assert_eq!(resumed.state.step, 3);
    let mut events = Vec::new();
    resumed
        .fit(&FitOptions::new(&out), |e| events.push(describe(&e)))
        .unwrap();
    // No second held-out loss "before training" on a resumed run.
    assert_eq!(events.join(" "), "step4 step5 step6 eval6 save6");
    // The steps after the resume are bit for bit those of the straight run; the records of the
    // steps before it were read back from trainer_state.json (to within an ulp, see above).
    assert_eq!(
        bits(&resumed.state.history[3..]),
        bits(&straight.state.history[3..])
    );
    for (a, b) in resumed.state.history[..3]
        .iter()
        .zip(&straight.state.history[..3])
    {
        assert!(
            (a.loss - b.loss).abs() <= 1e-15 * b.loss.abs(),
            "{a:?} {b:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_failed_step_is_an_error_and_the_run_can_go_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fail = Arc::new(AtomicBool::new(false));
    let mut t = trainer(4, fail.clone());
    t.step().unwrap();
    let position = t.state.position;
    fail.store(true, Ordering::SeqCst);
    let err = t.step().unwrap_err();
    match &err {
        TrainError::Step {
            step,
            message,
            out_of_memory,
        } => {
            assert_eq!(*step, 2);
            assert!(message.contains("the test asked for it"), "{message}");
            assert!(*out_of_memory);
        }
        e => panic!("not a step error: {e}"),
    }
    assert!(
        err.to_string()
            .starts_with("training step 2 failed on the device")
    );
    assert_eq!((t.state.step, t.state.position), (1, position));
    assert_eq!(t.state.history.len(), 1);
    // fit returns the failure as its error.
    let err = t.fit(&FitOptions::default(), |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::Step { step: 2, .. }), "{err}");
    fail.store(false, Ordering::SeqCst);
    assert_eq!(t.step().unwrap().step, 2);
}

#[test]
fn fit_refuses_a_zero_cadence_before_any_step() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = trainer(2, Arc::default());
    for options in [
        FitOptions::default().with_eval_every(0),
        FitOptions::default().with_save_every(0),
    ] {
        let err = t.fit(&options, |_| {}).unwrap_err();
        assert!(
            matches!(&err, TrainError::Setting { problem, .. } if problem.contains("at least 1")),
            "{err}"
        );
        assert_eq!(t.state.step, 0);
    }
}

#[test]
fn train_config_is_a_burn_config_that_round_trips_through_json() {
    use burn::config::Config;
    let config = TrainConfig::new()
        .with_steps(7)
        .with_schedule(Schedule::Cosine)
        .with_max_grad_norm(None)
        .with_optimizer(OptimizerKind::PagedAdamW { budget: 1 << 20 });
    assert_eq!(TrainConfig::default(), TrainConfig::new());
    let path = work("config").with_extension("json");
    config.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"cosine\"") && text.contains("paged-adamw"),
        "{text}"
    );
    assert_eq!(TrainConfig::load(&path).unwrap(), config);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_failed_evaluation_is_an_error_and_fit_again_does_what_it_missed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = work("eval-failure");
    let mut t = trainer(3, Arc::default());
    let fail_eval = t.model.fail_eval.clone();
    let options = FitOptions::new(&out)
        .with_save_every(10)
        .with_eval_every(10);
    // Before the first step.
    fail_eval.store(true, Ordering::SeqCst);
    let err = t.fit(&options, |_| {}).unwrap_err();
    assert!(
        matches!(
            &err,
            TrainError::Eval {
                step: 0,
                out_of_memory: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("evaluation after step 0 failed on the device")
    );
    // After the last step: no checkpoint yet, then a second `fit` evaluates and saves it.
    fail_eval.store(false, Ordering::SeqCst);
    let err = t
        .fit(&options, |e| {
            if let FitEvent::Step(r) = e
                && r.step == 3
            {
                fail_eval.store(true, Ordering::SeqCst);
            }
        })
        .unwrap_err();
    assert!(matches!(&err, TrainError::Eval { step: 3, .. }), "{err}");
    assert_eq!(find_checkpoint(&out), None);
    fail_eval.store(false, Ordering::SeqCst);
    let mut events = Vec::new();
    let summary = t.fit(&options, |e| events.push(describe(&e))).unwrap();
    assert_eq!(events.join(" "), "eval3 save3");
    assert!(summary.final_eval_loss.is_some() && summary.checkpoint.is_some());
    // A third call finds the run done and saved: nothing to do.
    let mut events = Vec::new();
    t.fit(&options, |e| events.push(describe(&e))).unwrap();
    assert!(events.is_empty(), "{events:?}");
    let _ = std::fs::remove_dir_all(&out);
}
