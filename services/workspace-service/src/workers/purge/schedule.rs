//! Which pieces of a purge's plan its lanes take, and when: a piece is ready once the pieces
//! it waits for are finished; a shared piece takes every free lane, another piece one lane.

use crate::domain::purge::{Piece, Planned};
use tokio::sync::Notify;

/// Which pieces of a plan are taken and finished, shared by an attempt's lanes.
pub(super) struct Schedule {
    pub(super) plan: &'static [Planned],
    pieces: std::sync::Mutex<Vec<Taken>>,
    /// Told when a piece is finished or a lane stops.
    pub(super) changed: Notify,
}

/// How far one piece is.
#[derive(Debug, Clone, Copy, Default)]
struct Taken {
    /// Lanes on it now.
    lanes: usize,
    /// A lane found nothing more of it to take: finished once no lane is on it.
    drained: bool,
}

/// What a lane does next.
pub(super) enum Next {
    Take(usize),
    /// Every piece left waits for one in progress.
    Wait,
    Done,
}

impl Schedule {
    pub(super) fn new(plan: &'static [Planned]) -> Self {
        Self {
            plan,
            pieces: std::sync::Mutex::new(vec![Taken::default(); plan.len()]),
            changed: Notify::new(),
        }
    }

    fn pieces(&self) -> std::sync::MutexGuard<'_, Vec<Taken>> {
        self.pieces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first piece in the plan's order that is ready and free (or shared).
    pub(super) fn next(&self) -> Next {
        let mut pieces = self.pieces();
        let finished = |pieces: &[Taken], p: Piece| {
            self.plan
                .iter()
                .position(|q| q.piece == p)
                .is_none_or(|i| pieces[i].drained && pieces[i].lanes == 0)
        };
        if self.plan.iter().all(|q| finished(&pieces, q.piece)) {
            return Next::Done;
        }
        for (i, planned) in self.plan.iter().enumerate() {
            let taken = pieces[i];
            if taken.drained || (!planned.shared && taken.lanes > 0) {
                continue;
            }
            if planned.after.iter().all(|&p| finished(&pieces, p)) {
                pieces[i].lanes += 1;
                return Next::Take(i);
            }
        }
        Next::Wait
    }

    /// A lane left piece `i`, having emptied it or not.
    pub(super) fn leave(&self, i: usize, drained: bool) {
        let mut pieces = self.pieces();
        pieces[i].lanes -= 1;
        pieces[i].drained |= drained;
        drop(pieces);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::purge::{PurgeKind, plan};

    fn taken(s: &Schedule) -> Piece {
        match s.next() {
            Next::Take(i) => s.plan[i].piece,
            Next::Wait => panic!("waits"),
            Next::Done => panic!("done"),
        }
    }

    fn index(s: &Schedule, p: Piece) -> usize {
        s.plan.iter().position(|q| q.piece == p).unwrap()
    }

    #[test]
    fn lanes_share_the_messages_and_the_channels_wait_for_them() {
        let s = Schedule::new(plan(PurgeKind::Workspace));
        // Both lanes start on the messages.
        assert_eq!(taken(&s), Piece::Messages);
        assert_eq!(taken(&s), Piece::Messages);
        let messages = index(&s, Piece::Messages);
        // One lane finds no window left; the other is still deleting its last one.
        s.leave(messages, true);
        let mut seen = Vec::new();
        loop {
            match s.next() {
                Next::Take(i) => {
                    let p = s.plan[i].piece;
                    assert_ne!(
                        p,
                        Piece::Channels,
                        "the channels wait for every messages lane"
                    );
                    assert_ne!(
                        p,
                        Piece::Messages,
                        "a drained shared piece takes no new lane"
                    );
                    seen.push(p);
                    s.leave(i, true);
                }
                Next::Wait => break,
                Next::Done => panic!("done with a lane on the messages"),
            }
        }
        assert!(seen.contains(&Piece::ReadReceipts), "{seen:?}");
        assert!(!seen.contains(&Piece::Target), "{seen:?}");
        // The last messages lane leaves: the channels are ready, for every free lane.
        s.leave(messages, true);
        assert_eq!(taken(&s), Piece::Channels);
        assert_eq!(taken(&s), Piece::Channels);
        let channels = index(&s, Piece::Channels);
        s.leave(channels, true);
        assert!(
            matches!(s.next(), Next::Wait),
            "the target waits for the other lane"
        );
        s.leave(channels, true);
        assert_eq!(taken(&s), Piece::Target);
        assert!(matches!(s.next(), Next::Wait));
        s.leave(index(&s, Piece::Target), true);
        assert!(matches!(s.next(), Next::Done));
    }

    #[test]
    fn a_piece_left_undrained_is_not_finished() {
        let s = Schedule::new(plan(PurgeKind::Room));
        let first = taken(&s);
        let i = index(&s, first);
        s.leave(i, false);
        // Not finished: it is handed out again, and the target still waits.
        assert_eq!(taken(&s), first);
        s.leave(i, true);
        let mut finished = vec![first];
        while let Next::Take(j) = s.next() {
            let p = s.plan[j].piece;
            if p == Piece::Target {
                assert_eq!(finished.len(), s.plan.len() - 1, "{finished:?}");
            }
            s.leave(j, true);
            finished.push(p);
        }
        assert!(matches!(s.next(), Next::Done));
        assert_eq!(finished.last(), Some(&Piece::Target));
    }
}
