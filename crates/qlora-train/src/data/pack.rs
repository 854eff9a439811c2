//! Best-Fit-Decreasing packing of samples into rows.

use super::Sample;

/// Best-Fit-Decreasing packing (TRL's `packing_strategy="bfd"`): samples, longest first, each
/// into the bin of `max_len` tokens it fills best (the fullest one it fits in), a new bin when
/// none has room. Each bin is one [`Sample`] that keeps its samples' lengths
/// ([`Sample::seq_lengths`]), so that padding-free batches keep them apart (positions restart,
/// attention stays inside each, the first token of each is not predicted from the one before):
/// the same loss per sample as unpacked, in fewer, fuller rows. Bins are in the order they
/// were opened; a sample longer than `max_len` is a bin of its own.
pub fn pack(samples: Vec<Sample>, max_len: usize) -> Vec<Sample> {
    let mut order: Vec<Sample> = samples
        .into_iter()
        .flat_map(|s| {
            s.sequences()
                .into_iter()
                .map(|(i, l)| Sample::new(i.to_vec(), l.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Stable: equal lengths keep their order, so packing is deterministic.
    order.sort_by_key(|s| std::cmp::Reverse(s.input_ids.len()));
    let mut bins: Vec<Sample> = Vec::new();
    // Free room → bins with that room, for the best fit in O(log n).
    let mut by_room: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for s in order {
        let n = s.input_ids.len();
        let best = by_room.range(n..).next().map(|(&room, _)| room);
        let bin = match best {
            Some(room) => {
                let list = by_room.get_mut(&room).expect("listed");
                let b = list.remove(0);
                if list.is_empty() {
                    by_room.remove(&room);
                }
                b
            }
            None => {
                bins.push(Sample {
                    input_ids: Vec::new(),
                    labels: Vec::new(),
                    seq_lengths: Vec::new(),
                });
                bins.len() - 1
            }
        };
        let b = &mut bins[bin];
        b.input_ids.extend(&s.input_ids);
        b.labels.extend(&s.labels);
        b.seq_lengths.push(n);
        let room = max_len.saturating_sub(b.input_ids.len());
        if room > 0 {
            by_room.entry(room).or_default().push(bin);
        }
    }
    for b in &mut bins {
        if b.seq_lengths.len() == 1 {
            b.seq_lengths.clear();
        }
    }
    bins
}
