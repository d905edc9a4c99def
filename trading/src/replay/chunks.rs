//! The events of a replay segment as the chunks they arrived in, indexed as
//! one sequence (event index 0 is the segment's first event).

use crate::event::Event;

/// Chunks of events, in order, indexed across chunk boundaries.
#[derive(Default)]
pub(super) struct Chunks<'e> {
    /// The index of each chunk's first event.
    starts: Vec<usize>,
    chunks: Vec<&'e [Event]>,
    len: usize,
}

impl<'e> Chunks<'e> {
    /// Appends a chunk; returns the index of its first event.
    pub(super) fn push(&mut self, chunk: &'e [Event]) -> usize {
        let start = self.len;
        if !chunk.is_empty() {
            self.starts.push(start);
            self.chunks.push(chunk);
            self.len += chunk.len();
        }
        start
    }

    /// The index of the first event with this sequence number.
    pub(super) fn position_of_sequence(&self, sequence: i64) -> Option<usize> {
        self.starts.iter().zip(&self.chunks).find_map(|(start, c)| {
            c.iter()
                .position(|ev| ev.sequence_number == sequence)
                .map(|i| start + i)
        })
    }
}

impl std::ops::Index<usize> for Chunks<'_> {
    type Output = Event;

    fn index(&self, i: usize) -> &Event {
        // The last chunk starting at or before `i`; out of range panics as a
        // slice index does (a bug: indexes come from the chunks pushed).
        let c = self.starts.partition_point(|&s| s <= i).saturating_sub(1);
        &self.chunks[c][i - self.starts[c]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64) -> Event {
        Event {
            event_id: format!("e{seq}"),
            event_type: "CHECKPOINT".into(),
            aggregate_id: "k".into(),
            event_data: "{}".into(),
            sequence_number: seq,
            created_at: "2025-01-15T10:00:00".into(),
        }
    }

    #[test]
    fn indexes_across_chunks_and_skips_empty_ones() {
        let a: Vec<Event> = (1..=3).map(ev).collect();
        let b: Vec<Event> = (4..=4).map(ev).collect();
        let c: Vec<Event> = (5..=9).map(ev).collect();
        let mut chunks = Chunks::default();
        assert_eq!(chunks.push(&a), 0);
        assert_eq!(chunks.push(&[]), 3);
        assert_eq!(chunks.push(&b), 3);
        assert_eq!(chunks.push(&c), 4);
        let seqs: Vec<i64> = (0..9).map(|i| chunks[i].sequence_number).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
        assert_eq!(chunks.position_of_sequence(4), Some(3));
        assert_eq!(chunks.position_of_sequence(10), None);
    }
}
