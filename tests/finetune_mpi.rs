//! `finetune` as an MPI job (`--features mpi`, issue #37), on the golden tiny LLaMA over
//! loopback: `mpirun -np 2` trains like one process on the same global batch (losses within
//! 1e-5, LoRA dropout on: each rank draws the masks of its rows of the whole micro-batch), the
//! two ranks' adapters are
//! bit-identical, a rank killed at a random moment ends the whole job with a message naming it
//! (no hang), and `--resume` under `mpirun` finishes with the losses of the uninterrupted job,
//! bit for bit.
//!
//! On the default model, 3 steps under `mpirun -np 2` give one process's losses within 1e-4
//! (`default_model_under_mpirun_matches_one_process`).
//!
//! Needs Open MPI's `mpirun` (Debian's `openmpi-bin`): without it the test fails rather than
//! skips, as `.ci/run` installs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn_qlora::train::find_checkpoint;

#[path = "support/byte_tokenizer.rs"]
mod byte_tokenizer;
#[path = "support/cli.rs"]
mod cli;

const STEPS: usize = 16;

fn args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "16",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--lr",
        "1e-3",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--eval-every",
        "4",
        "--save-every",
        "1",
        "--device",
        "flex",
        "--no-samples",
        // Ranks add their shares in another order than one process: in f32 that moves the
        // losses by float reordering only, whereas bf16 operands can round such a difference
        // up to a whole bf16 step (see the README).
        "--compute-dtype",
        "f32",
    ]
}

/// `mpirun -np 2` of `finetune args`, one kernel thread per rank.
fn mpirun(args: &[&str]) -> Command {
    mpirun_ranks(&[args, args])
}

/// `mpirun` of one `finetune` per entry of `ranks` with that rank's arguments (MPI's
/// multiple-program form, `-np 1 prog a : -np 1 prog b`), one kernel thread per rank.
fn mpirun_ranks(ranks: &[&[&str]]) -> Command {
    let mut c = Command::new("mpirun");
    c.arg("--oversubscribe");
    if ranks.windows(2).all(|w| w[0] == w[1]) {
        c.args(["-np", &ranks.len().to_string()])
            .arg(cli::example("finetune"))
            .args(ranks[0]);
    } else {
        for (i, args) in ranks.iter().enumerate() {
            if i > 0 {
                c.arg(":");
            }
            c.args(["-np", "1"])
                .arg(cli::example("finetune"))
                .args(*args);
        }
    }
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1");
    c
}

/// Runs `cmd` with its output in files, failing if it runs past `limit` (a hang); returns its
/// status, its output and how long it took.
fn run_within(mut cmd: Command, limit: Duration, what: &str) -> (bool, String, Duration) {
    let dir = std::env::temp_dir().join(format!(
        "qlora-mpi-out-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let mut child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let status = wait_within(&mut child, limit, what);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status.success(), text, started.elapsed())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// (step, loss) of every training step in `out/metrics.jsonl`.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64().unwrap(), v["loss"].as_f64()?))
        })
        .collect()
}

fn checkpoint_step(out: &Path) -> Option<u64> {
    let dir = find_checkpoint(out)?;
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["state"]["step"].as_u64()
}

/// The rank and pid of a line "mpi: rank R of N on HOST (pid P)".
fn rank_and_pid(line: &str) -> Option<(usize, u32)> {
    let rest = line.split("mpi: rank ").nth(1)?;
    let rank = rest.split(' ').next()?.parse().ok()?;
    let pid = rest
        .split("(pid ")
        .nth(1)?
        .split(')')
        .next()?
        .parse()
        .ok()?;
    Some((rank, pid))
}

/// Waits for `child` up to `limit`; kills it and fails if it is still running then.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mpirun_two_ranks_train_like_one_process_and_a_killed_rank_ends_the_job() {
    assert!(
        Command::new("mpirun").arg("--version").output().is_ok(),
        "mpirun is not installed: install Open MPI (Debian: openmpi-bin libopenmpi-dev)"
    );
    let tiny = cli::TinyRun::new("mpi");
    let (model, work, data) = (tiny.model.clone(), tiny.work.clone(), tiny.data.clone());
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());

    // One process (the same binary, started without a launcher: MPI is never initialized).
    let single = work.join("single");
    let log = cli::ok("finetune", &args(m, d, single.to_str().unwrap()));
    assert!(!log.contains("mpi:"), "{log}");
    let want = losses(&single);
    assert_eq!(want.len(), STEPS);

    // An error on one rank, while the other waits for it in a sum, ends the whole job with
    // the rank named; so do ranks that would not run the same run (other options).
    let unused = work.join("unused");
    let unused = unused.to_str().unwrap();
    let single_args = args(m, d, unused);
    let missing = work.join("no-such-model");
    let bad_model = args(missing.to_str().unwrap(), d, unused);
    let (ok, log, took) = run_within(
        mpirun_ranks(&[&single_args, &bad_model]),
        Duration::from_secs(60),
        "a job one of whose ranks fails",
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("error on rank 1 of 2") && log.contains("no-such-model: no such file"),
        "{log}"
    );
    println!("a failed rank ended the job in {took:?}");
    let mut other_steps = args(m, d, unused);
    other_steps[7] = "15";
    let (ok, log, _) = run_within(
        mpirun_ranks(&[&single_args, &other_steps]),
        Duration::from_secs(60),
        "a job whose ranks run different runs",
    );
    assert!(!ok, "{log}");
    assert!(log.contains("does not run the same run as rank 0"), "{log}");

    // Two ranks, each half of every micro-batch.
    let job = work.join("job");
    let out = mpirun(&args(m, d, job.to_str().unwrap())).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "mpirun failed:\n{log}");
    for rank in 0..2 {
        assert!(log.contains(&format!("mpi: rank {rank} of 2")), "{log}");
    }
    assert!(
        log.contains("data parallel across 2 MPI processes"),
        "{log}"
    );
    assert!(log.contains("adapters are bit-identical"), "{log}");
    assert!(log.contains("all-reduced per step"), "{log}");
    assert_eq!(
        log.matches("held-out loss before training").count(),
        1,
        "rank 0 alone prints: {log}"
    );
    let got = losses(&job);
    assert_eq!(got.len(), STEPS, "{log}");
    for ((s1, a), (s2, b)) in want.iter().zip(&got) {
        assert_eq!(s1, s2);
        assert!(a.is_finite() && b.is_finite(), "step {s1}: {a} vs {b}");
        assert!(
            (a - b).abs() <= 1e-5,
            "step {s1}: one process {a}, two ranks {b}"
        );
    }
    assert!(job.join("adapter/adapter_model.safetensors").is_file());

    // Three ranks (a micro-batch of 4 split 2 + 1 + 1) and two micro-batches per step.
    let (single3, job3) = (work.join("single3"), work.join("job3"));
    let with_accum = |out: &Path| {
        let mut a = args(m, d, out.to_str().unwrap());
        a.extend(["--grad-accum", "2"]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let a1 = with_accum(&single3);
    cli::ok(
        "finetune",
        &a1.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let a3 = with_accum(&job3);
    let a3: Vec<&str> = a3.iter().map(String::as_str).collect();
    let out = mpirun_ranks(&[&a3, &a3, &a3]).output().unwrap();
    assert!(out.status.success(), "mpirun -np 3 failed:\n{}", text(&out));
    let (want3, got3) = (losses(&single3), losses(&job3));
    assert_eq!(want3.len(), STEPS);
    assert_eq!(got3.len(), STEPS);
    for ((s, a), (_, b)) in want3.iter().zip(&got3) {
        assert!(
            (a - b).abs() <= 1e-5,
            "np 3, step {s}: one process {a}, three ranks {b}"
        );
    }

    // Kill one rank at a seeded moment past a seeded checkpoint.
    let killed = work.join("killed");
    let k = killed.to_str().unwrap();
    // A new moment every run (the seed is printed; MPI_KILL_SEED replays one).
    let seed = std::env::var("MPI_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    let (target, victim) = (2 + seed % (STEPS as u64 - 8), (seed / 7) % 2);
    println!("MPI_KILL_SEED={seed}: rank {victim} killed past checkpoint {target}");
    let mut child = mpirun(&args(m, d, k))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut pids = [None; 2];
    let mut lines = Vec::new();
    let started = Instant::now();
    while checkpoint_step(&killed).is_none_or(|s| s < target) {
        while let Ok(line) = rx.try_recv() {
            // "mpi: rank R of 2 on HOST (pid P)"
            if let Some((rank, pid)) = rank_and_pid(&line) {
                pids[rank] = Some(pid);
            }
            lines.push(line);
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before the kill: {lines:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "{lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(seed % 5));
    lines.extend(rx.try_iter());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job ended before the kill (MPI_KILL_SEED={seed}): {lines:?}"
    );
    let pid = pids[victim as usize]
        .or_else(|| {
            lines
                .iter()
                .filter_map(|l| rank_and_pid(l))
                .find(|&(r, _)| r == victim as usize)
                .map(|(_, p)| p)
        })
        .unwrap_or_else(|| panic!("the victim printed its pid: {lines:?}"));
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "kill -9 {pid} failed (MPI_KILL_SEED={seed})"
    );
    let killed_at = Instant::now();
    let status = wait_within(&mut child, Duration::from_secs(20), "the job after a kill");
    println!("the job ended {:?} after the kill", killed_at.elapsed());
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let log = lines.join("\n");
    assert!(!status.success(), "a killed rank must fail the job: {log}");
    assert!(
        log.contains(&format!("process rank {victim} with PID")) && log.contains("signal 9"),
        "the job's end names the killed rank and its signal: {log}"
    );
    // The survivor, sent SIGTERM by mpirun, names what is left.
    assert!(
        log.contains("ended by SIGTERM") && log.contains("is intact") && log.contains(k),
        "the other rank says where the last checkpoint is: {log}"
    );
    let kept = checkpoint_step(&killed).expect("a whole checkpoint survives");
    assert!(kept >= target);

    // Resume under mpirun: the uninterrupted job's losses, bit for bit.
    let mut a = args(m, d, k);
    a.push("--resume");
    let out = mpirun(&a).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "resume failed:\n{log}");
    assert!(log.contains(&format!("at step {kept}")), "{log}");
    let resumed = losses(&killed);
    assert_eq!(resumed.len(), STEPS, "{log}");
    for ((s1, a), (_, b)) in got.iter().zip(&resumed) {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "step {s1}: {a} vs {b} after resume"
        );
    }
}

#[test]
#[cfg_attr(
    qlora_no_default_model,
    ignore = "cannot run here: the default model is not cached (QLORA_FETCH_MODEL=1 fetches it)"
)]
fn default_model_under_mpirun_matches_one_process() {
    let work = cli::tmp("mpi-default");
    let run_args = |out: &Path| -> Vec<String> {
        [
            "--steps",
            "3",
            "--compute-dtype",
            "f32",
            "--no-samples",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let single = work.join("single");
    let a = run_args(&single);
    cli::ok(
        "finetune",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let job = work.join("job");
    let a = run_args(&job);
    let out = mpirun(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "mpirun failed:\n{log}");
    assert!(log.contains("adapters are bit-identical"), "{log}");
    let (want, got) = (losses(&single), losses(&job));
    assert_eq!(want.len(), 3);
    assert_eq!(got.len(), 3, "{log}");
    for ((s, a), (_, b)) in want.iter().zip(&got) {
        assert!(a.is_finite() && b.is_finite(), "step {s}: {a} vs {b}");
        assert!(
            (a - b).abs() <= 1e-4,
            "step {s}: one process {a}, two ranks {b}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
