//! Where served events come from: the seeded generator or an `--events` file.
//! The server only sees this interface.

use std::ops::ControlFlow;

use crate::model::{EventKind, ThreatMask};
use crate::threats::ThreatInfo;

/// One event as served.
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub kind: EventKind,
    /// The (threat type, status) pairs the event's threats carry.
    pub threats: ThreatMask,
    /// The event's exact JSON text.
    pub json: &'a str,
}

/// Visitors return `Break` to stop early (e.g. the client went away).
pub type Visitor<'v> = dyn FnMut(EventRef<'_>) -> ControlFlow<()> + 'v;

pub trait EventSource: Send + Sync {
    /// Visits every event of `kind` filed in `[from_ms, to_ms)` that is
    /// visible at `now_ms` (filed time + indexing lag <= now), in a
    /// deterministic order shuffled by `order_seed`.
    fn visit_window(
        &self,
        kind: EventKind,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        order_seed: u64,
        visit: &mut Visitor<'_>,
    ) -> ControlFlow<()>;

    /// Visits every event of every kind filed in `[from_ms, to_ms)` and
    /// visible at `now_ms`, oldest filed time first.
    fn visit_visible(
        &self,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        visit: &mut Visitor<'_>,
    ) -> ControlFlow<()>;

    /// The threat with this id, if any served event refers to it.
    fn threat(&self, id: &str) -> Option<ThreatInfo>;
}
