//! [`Paged`]: per-parameter optimizer state paged between a host device and the parameter's
//! device under a byte budget.
//!
//! Policy (bnb's, made explicit): a state of a tensor under [`PAGEABLE_MIN_ELEMENTS`] elements
//! is never paged. A larger state is moved onto the parameter's device for its update; after
//! the update it stays there if the states already resident plus this one fit the budget, and
//! goes back to the host otherwise. With an unlimited budget nothing ever moves (as with bnb's
//! unified memory when the device is large enough); with a budget of `B` bytes the resident
//! paged state never exceeds `B`, plus the one state being updated.
//!
//! Asynchronous prefetch of the next parameter's state is not implemented: Burn 0.22 offers no
//! asynchronous host-to-device copy to overlap it with the current update.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};

/// Tensors with fewer elements keep their state on the device (bitsandbytes' threshold).
pub const PAGEABLE_MIN_ELEMENTS: usize = 100_000;

/// Counters shared by a [`Paged`] optimizer and all its states.
#[derive(Debug, Default)]
pub struct PagingStats {
    budget: usize,
    resident: AtomicUsize,
    peak_resident: AtomicUsize,
    bytes_moved: AtomicU64,
    page_ins: AtomicU64,
    page_outs: AtomicU64,
}

impl PagingStats {
    /// The device-memory budget for paged state, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }
    /// Bytes of pageable state resident on devices now (counted against the budget).
    pub fn resident_bytes(&self) -> usize {
        self.resident.load(Ordering::SeqCst)
    }
    /// Most bytes of pageable state resident at once, the state being updated included.
    pub fn peak_resident_bytes(&self) -> usize {
        self.peak_resident.load(Ordering::SeqCst)
    }
    /// Bytes copied between host and device so far (both directions).
    pub fn bytes_moved(&self) -> u64 {
        self.bytes_moved.load(Ordering::SeqCst)
    }
    /// Host → device copies so far.
    pub fn page_ins(&self) -> u64 {
        self.page_ins.load(Ordering::SeqCst)
    }
    /// Device → host copies so far.
    pub fn page_outs(&self) -> u64 {
        self.page_outs.load(Ordering::SeqCst)
    }

    fn note_peak(&self, in_flight: usize) {
        let now = self.resident.load(Ordering::SeqCst) + in_flight;
        self.peak_resident.fetch_max(now, Ordering::SeqCst);
    }

    /// Reserves `bytes` if they fit under the budget.
    fn try_reserve(&self, bytes: usize) -> bool {
        self.resident
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                (r + bytes <= self.budget).then_some(r + bytes)
            })
            .is_ok()
    }
}

/// Where a state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// On the host device, not counted.
    Host,
    /// On a device, counted against the budget.
    Resident,
    /// On a device, not counted (small tensors, or a state just loaded from a record).
    Unpaged,
}

/// The state of one parameter under [`Paged`]: the wrapped optimizer's state, where it is, and
/// its size.
#[derive(Clone)]
pub struct PagedState<S> {
    inner: S,
    place: Place,
    bytes: usize,
    host: Device,
    stats: Arc<PagingStats>,
}

impl<S> PagedState<S> {
    /// The wrapped optimizer's state.
    pub fn inner(&self) -> &S {
        &self.inner
    }
    /// True while the state sits on the host device.
    pub fn is_paged_out(&self) -> bool {
        self.place == Place::Host
    }
}

impl<S: RecordState + Clone> RecordState for PagedState<S> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.inner.state_flatten(prefix, out);
    }

    /// A loaded state is placed on `device` and counted again from its next update.
    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self {
            inner: S::state_unflatten(prefix, src, device)?,
            place: Place::Unpaged,
            bytes: 0,
            host: Device::flex(),
            stats: Arc::new(PagingStats::default()),
        })
    }
}

/// The settings of [`Paged`]: how many bytes of optimizer state may stay on the devices.
#[derive(burn::config::Config, Debug, PartialEq, Eq)]
pub struct PagedConfig {
    /// Device bytes of optimizer state kept resident (`usize::MAX`: never page).
    #[config(default = "usize::MAX")]
    pub budget: usize,
}

impl PagedConfig {
    /// `inner` paged to `host` (see [`Paged::new`]).
    pub fn build<O: Optimizer>(&self, inner: O, host: Device) -> Paged<O> {
        Paged::new(inner, host, self.budget)
    }

    /// `inner` paged to `host`, as the optimizer of a whole module.
    pub fn init<O: Optimizer>(&self, inner: O, host: Device) -> ModuleOptimizer
    where
        ModuleOptimizer: From<Paged<O>>,
    {
        ModuleOptimizer::from(self.build(inner, host))
    }
}

/// A decorator that pages the state of any [`Optimizer`] between a host device and the
/// parameters' devices (see the module docs).
///
/// ```
/// use burn::optim::{AdamWConfig, ModuleOptimizer};
/// use burn::tensor::Device;
/// use qlora_optim::Paged;
///
/// // Keep at most 64 MiB of AdamW state on the device, the rest in host RAM.
/// let paged = Paged::new(AdamWConfig::new().with_weight_decay(0.0).build(), Device::flex(), 64 << 20);
/// let stats = paged.stats();
/// let optim = ModuleOptimizer::from(paged);
/// # let _ = (optim, stats);
/// ```
#[derive(Clone)]
pub struct Paged<O> {
    inner: O,
    host: Device,
    stats: Arc<PagingStats>,
}

impl<O: Optimizer> Paged<O> {
    /// Wraps `inner`, with `host` holding paged-out state and `budget` bytes of state allowed
    /// to stay on devices (`usize::MAX`: never page).
    pub fn new(inner: O, host: Device, budget: usize) -> Self {
        Self {
            inner,
            host,
            stats: Arc::new(PagingStats {
                budget,
                ..PagingStats::default()
            }),
        }
    }

    /// The shared counters (resident bytes, bytes moved, ...).
    pub fn stats(&self) -> Arc<PagingStats> {
        self.stats.clone()
    }

    /// The wrapped optimizer.
    pub fn inner(&self) -> &O {
        &self.inner
    }
}

/// Bytes of a state, from its recorded tensors.
fn state_bytes<S: RecordState>(s: &S) -> usize {
    let mut sink = StateSink::default();
    s.state_flatten("s", &mut sink);
    sink.tensors.iter().map(|(_, d)| d.as_bytes().len()).sum()
}

impl<O: Optimizer> Optimizer for Paged<O> {
    type State<const D: usize> = PagedState<O::State<D>>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let pageable = tensor.shape().num_elements() >= PAGEABLE_MIN_ELEMENTS;
        // The state arrives on `device` (ModuleOptimizer calls `to_device` first); page it in
        // here too in case a caller did not.
        let (prev, was_resident, bytes) = match state {
            None => (None, false, 0),
            Some(s) => {
                let s = Self::to_device(s, &device);
                let resident = s.place == Place::Resident;
                (Some(s.inner), resident, s.bytes)
            }
        };
        if pageable && !was_resident {
            self.stats.note_peak(bytes);
        }
        let (tensor, next) = self.inner.step(lr, tensor, grad, prev);
        let next = next.map(|inner| {
            let bytes = if bytes == 0 {
                state_bytes(&inner)
            } else {
                bytes
            };
            let mut s = PagedState {
                inner,
                place: Place::Unpaged,
                bytes,
                host: self.host.clone(),
                stats: self.stats.clone(),
            };
            if !pageable {
                return s;
            }
            if was_resident || self.stats.try_reserve(bytes) {
                s.place = Place::Resident;
                self.stats.note_peak(0);
            } else if device == self.host {
                // Nothing to move: the parameter lives on the host device itself.
                s.place = Place::Host;
            } else {
                s.inner = O::to_device(s.inner, &self.host);
                s.place = Place::Host;
                self.stats
                    .bytes_moved
                    .fetch_add(bytes as u64, Ordering::SeqCst);
                self.stats.page_outs.fetch_add(1, Ordering::SeqCst);
            }
            s
        });
        (tensor, next)
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        match state.place {
            Place::Host if *device != state.host => {
                state.inner = O::to_device(state.inner, device);
                state.place = Place::Unpaged;
                let stats = &state.stats;
                stats
                    .bytes_moved
                    .fetch_add(state.bytes as u64, Ordering::SeqCst);
                stats.page_ins.fetch_add(1, Ordering::SeqCst);
            }
            Place::Host => state.place = Place::Unpaged,
            Place::Resident | Place::Unpaged => state.inner = O::to_device(state.inner, device),
        }
        state
    }
}
