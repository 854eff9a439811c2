//! The seeds of seeded dropout, drawn from the device's generator, and the tape that lets a
//! checkpointed block draw the same ones again when its backward pass recomputes it.
//!
//! [`seeded_dropout`](qlora_fused::seeded_dropout) needs one seed per call. During a
//! checkpointed block's forward pass ([`crate::checkpoint`]) the seeds drawn are recorded; its
//! recomputation replays them instead of drawing, so the masks are the same ones, and the
//! device's generator has moved exactly as far as without checkpointing: a run is the same run
//! with it or without it.
//!
//! A part of a batch can draw the masks the whole batch would draw on its rows
//! ([`with_dropout_row_offset`]): the masks are counter-based (element `i` of the flattened
//! input decides from `seed + (i + 1)·φ`), so a part whose first row is row `o` of the whole
//! draws with `seed + o·width·φ`. Data-parallel processes use it so that each draws, for its
//! share of a micro-batch, the masks one process would draw for the whole.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use burn::tensor::{Device, Distribution, Int, Tensor};

/// What the current thread does with seeds: draw them, draw and record them, or replay them.
enum Tape {
    Record(Vec<u64>),
    Replay(VecDeque<u64>),
}

thread_local! {
    static TAPE: RefCell<Option<Tape>> = const { RefCell::new(None) };
    /// How many checkpointed calls nested inside the current block are running: their output
    /// is read (by the enclosing block), so [`recomputing`] is false inside them.
    static NESTED: Cell<usize> = const { Cell::new(0) };
    /// Rows of the whole batch before the part this thread computes.
    static ROW_OFFSET: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` (a forward and backward pass of a part of a batch) with dropout masks drawn as for
/// rows `rows_before..` of the whole batch: [`dropout_seed_rows`] shifts its seeds so, on this
/// thread.
pub fn with_dropout_row_offset<R>(rows_before: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            ROW_OFFSET.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(ROW_OFFSET.with(|o| o.replace(rows_before as u64)));
    f()
}

/// [`dropout_seed`] for an input whose flattened rows are `width` wide, shifted to the rows
/// [`with_dropout_row_offset`] sets (unshifted outside it): what a layer's dropout passes to
/// [`qlora_fused::seeded_dropout`] and to the fused QLoRA linear.
pub fn dropout_seed_rows(device: &Device, width: usize) -> u64 {
    let offset = ROW_OFFSET.with(Cell::get);
    taped(|| {
        draw(device).wrapping_add(
            offset
                .wrapping_mul(width as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    })
}

/// A seed for [`qlora_fused::seeded_dropout`] on `device`: from the device's generator (so a
/// run seeded alike draws alike), or, while a checkpointed block is recomputed, the one its
/// forward pass drew at the same call.
///
/// # Panics
///
/// When a recomputation asks for more seeds than its forward pass drew (the block's forward
/// pass is not a function of its input, parameters and seeds).
pub fn dropout_seed(device: &Device) -> u64 {
    taped(|| draw(device))
}

/// A seed from `draw`, recorded on a recording tape, or the next replayed one instead.
fn taped(draw: impl FnOnce() -> u64) -> u64 {
    let replayed = TAPE.with(|t| match &mut *t.borrow_mut() {
        Some(Tape::Replay(seeds)) => Some(seeds.pop_front().expect(
            "a checkpointed block drew more dropout seeds when recomputed than in its forward pass",
        )),
        _ => None,
    });
    if let Some(seed) = replayed {
        return seed;
    }
    let seed = draw();
    TAPE.with(|t| {
        if let Some(Tape::Record(seeds)) = &mut *t.borrow_mut() {
            seeds.push(seed);
        }
    });
    seed
}

/// One seed from the device's generator: two 31-bit halves of a uniform draw.
fn draw(device: &Device) -> u64 {
    let halves = Tensor::<1, Int>::random([2], Distribution::Uniform(0.0, 2_147_483_647.0), device)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("two seed halves");
    ((halves[0] as u64) << 31) ^ halves[1] as u64
}

/// Whether a checkpointed block is being recomputed on this thread (its backward pass), and
/// this is the block's own forward closure rather than a checkpointed call nested in it: the
/// block's output values are then not read, only their gradient, so the block may skip what
/// only its output's values need (see [`crate::QLoraLinear::forward_output_unused`]). Inside a
/// nested call, whose output the block reads, it is false.
pub fn recomputing() -> bool {
    NESTED.with(Cell::get) == 0 && TAPE.with(|t| matches!(&*t.borrow(), Some(Tape::Replay(_))))
}

/// Runs `f`, a checkpointed call inside another checkpointed block (run directly: the
/// enclosing block already recomputes it), with [`recomputing`] false: its output is read.
pub(crate) fn nested<R>(f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            NESTED.with(|n| n.set(n.get() - 1));
        }
    }
    NESTED.with(|n| n.set(n.get() + 1));
    let _depth = Depth;
    f()
}

/// Whether a checkpointed block is being run or recomputed on this thread.
pub(crate) fn taping() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

/// Runs `f`, recording the seeds it draws.
pub(crate) fn recording<R>(f: impl FnOnce() -> R) -> (R, Vec<u64>) {
    let _frame = Frame::push(Tape::Record(Vec::new()));
    let out = f();
    let Some(Tape::Record(seeds)) = TAPE.with(|t| t.borrow_mut().take()) else {
        unreachable!("the recording frame is this call's")
    };
    (out, seeds)
}

/// Runs `f`, giving it `seeds` in order instead of drawing.
///
/// # Panics
///
/// When `f` draws fewer seeds than given (see [`dropout_seed`] for more).
pub(crate) fn replaying<R>(seeds: &[u64], f: impl FnOnce() -> R) -> R {
    let _frame = Frame::push(Tape::Replay(seeds.iter().copied().collect()));
    let out = f();
    let left = match TAPE.with(|t| t.borrow_mut().take()) {
        Some(Tape::Replay(left)) => left.len(),
        _ => unreachable!("the replaying frame is this call's"),
    };
    assert_eq!(
        left, 0,
        "a checkpointed block drew fewer dropout seeds when recomputed than in its forward pass"
    );
    out
}

/// The thread's tape while a frame lives (cleared on unwinding too).
struct Frame;

impl Frame {
    fn push(tape: Tape) -> Self {
        TAPE.with(|t| {
            let mut t = t.borrow_mut();
            assert!(t.is_none(), "checkpointed blocks do not nest");
            *t = Some(tape);
        });
        Frame
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        TAPE.with(|t| t.borrow_mut().take());
    }
}
