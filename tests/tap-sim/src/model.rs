//! Vocabulary shared by every module: event kinds (the SIEM arrays), SIEM
//! endpoints, threat types/statuses and the bit mask used to filter on them.

use clap::ValueEnum;

/// One of the four SIEM event arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum EventKind {
    #[value(name = "messagesDelivered")]
    MessagesDelivered,
    #[value(name = "messagesBlocked")]
    MessagesBlocked,
    #[value(name = "clicksPermitted")]
    ClicksPermitted,
    #[value(name = "clicksBlocked")]
    ClicksBlocked,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::MessagesDelivered,
        EventKind::MessagesBlocked,
        EventKind::ClicksPermitted,
        EventKind::ClicksBlocked,
    ];

    /// The JSON array name used by the API (and by `/_sim/truth`).
    pub fn array_name(self) -> &'static str {
        match self {
            EventKind::MessagesDelivered => "messagesDelivered",
            EventKind::MessagesBlocked => "messagesBlocked",
            EventKind::ClicksPermitted => "clicksPermitted",
            EventKind::ClicksBlocked => "clicksBlocked",
        }
    }

    pub fn is_message(self) -> bool {
        matches!(
            self,
            EventKind::MessagesDelivered | EventKind::MessagesBlocked
        )
    }

    /// Small stable number, used to derive per-kind random streams.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The two rolling-24h request pools each credential has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// `/v2/siem/clicks/permitted` alone.
    ClicksPermitted,
    /// Every other SIEM endpoint together.
    SiemOther,
}

impl Pool {
    pub const ALL: [Pool; 2] = [Pool::ClicksPermitted, Pool::SiemOther];

    pub fn name(self) -> &'static str {
        match self {
            Pool::ClicksPermitted => "clicks_permitted",
            Pool::SiemOther => "siem_other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The six SIEM endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiemEndpoint {
    All,
    Issues,
    MessagesBlocked,
    MessagesDelivered,
    ClicksBlocked,
    ClicksPermitted,
}

impl SiemEndpoint {
    pub const ALL: [SiemEndpoint; 6] = [
        SiemEndpoint::All,
        SiemEndpoint::Issues,
        SiemEndpoint::MessagesBlocked,
        SiemEndpoint::MessagesDelivered,
        SiemEndpoint::ClicksBlocked,
        SiemEndpoint::ClicksPermitted,
    ];

    pub fn path(self) -> &'static str {
        match self {
            SiemEndpoint::All => "/v2/siem/all",
            SiemEndpoint::Issues => "/v2/siem/issues",
            SiemEndpoint::MessagesBlocked => "/v2/siem/messages/blocked",
            SiemEndpoint::MessagesDelivered => "/v2/siem/messages/delivered",
            SiemEndpoint::ClicksBlocked => "/v2/siem/clicks/blocked",
            SiemEndpoint::ClicksPermitted => "/v2/siem/clicks/permitted",
        }
    }

    /// The arrays this endpoint returns, in response order.
    pub fn kinds(self) -> &'static [EventKind] {
        use EventKind::*;
        match self {
            SiemEndpoint::All => &[
                MessagesDelivered,
                MessagesBlocked,
                ClicksPermitted,
                ClicksBlocked,
            ],
            SiemEndpoint::Issues => &[MessagesDelivered, ClicksPermitted],
            SiemEndpoint::MessagesBlocked => &[MessagesBlocked],
            SiemEndpoint::MessagesDelivered => &[MessagesDelivered],
            SiemEndpoint::ClicksBlocked => &[ClicksBlocked],
            SiemEndpoint::ClicksPermitted => &[ClicksPermitted],
        }
    }

    pub fn pool(self) -> Pool {
        match self {
            SiemEndpoint::ClicksPermitted => Pool::ClicksPermitted,
            _ => Pool::SiemOther,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreatType {
    Url,
    Attachment,
    MessageText,
}

impl ThreatType {
    pub const ALL: [ThreatType; 3] = [
        ThreatType::Url,
        ThreatType::Attachment,
        ThreatType::MessageText,
    ];

    /// Query-parameter / live-API spelling.
    pub fn name(self) -> &'static str {
        match self {
            ThreatType::Url => "url",
            ThreatType::Attachment => "attachment",
            ThreatType::MessageText => "messageText",
        }
    }

    /// Case-insensitive, because documented-shape events use upper case.
    pub fn parse(s: &str) -> Option<ThreatType> {
        ThreatType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreatStatus {
    Active,
    Cleared,
    FalsePositive,
}

impl ThreatStatus {
    pub const ALL: [ThreatStatus; 3] = [
        ThreatStatus::Active,
        ThreatStatus::Cleared,
        ThreatStatus::FalsePositive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreatStatus::Active => "active",
            ThreatStatus::Cleared => "cleared",
            ThreatStatus::FalsePositive => "falsePositive",
        }
    }

    pub fn parse(s: &str) -> Option<ThreatStatus> {
        ThreatStatus::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// Set of (threat type, threat status) pairs, one bit per pair.
///
/// An event's mask holds the pairs of its threats (each `threatsInfoMap`
/// entry, or a click's own fields); a query's mask holds the pairs its
/// `threatType`/`threatStatus` parameters allow. The event is returned when
/// the masks intersect, i.e. when at least one threat entry matches both
/// filters — the API's "any entry matches" rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreatMask(u16);

impl ThreatMask {
    fn bit(threat_type: ThreatType, status: ThreatStatus) -> u16 {
        1 << (threat_type as u16 * 3 + status as u16)
    }

    pub fn of(threat_type: ThreatType, status: ThreatStatus) -> ThreatMask {
        ThreatMask(Self::bit(threat_type, status))
    }

    pub fn add(&mut self, threat_type: ThreatType, status: ThreatStatus) {
        self.0 |= Self::bit(threat_type, status);
    }

    /// Every combination of the given types and statuses.
    pub fn product(types: &[ThreatType], statuses: &[ThreatStatus]) -> ThreatMask {
        let mut mask = ThreatMask::default();
        for &t in types {
            for &s in statuses {
                mask.add(t, s);
            }
        }
        mask
    }

    /// The API default: any type, status active or cleared.
    pub fn default_filter() -> ThreatMask {
        ThreatMask::product(
            &ThreatType::ALL,
            &[ThreatStatus::Active, ThreatStatus::Cleared],
        )
    }

    pub fn everything() -> ThreatMask {
        ThreatMask::product(&ThreatType::ALL, &ThreatStatus::ALL)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersects(self, other: ThreatMask) -> bool {
        self.0 & other.0 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_matches_only_when_one_entry_matches_both_filters() {
        // A message with a cleared url threat and an active attachment threat.
        let mut event = ThreatMask::default();
        event.add(ThreatType::Url, ThreatStatus::Cleared);
        event.add(ThreatType::Attachment, ThreatStatus::Active);

        let url_active = ThreatMask::product(&[ThreatType::Url], &[ThreatStatus::Active]);
        assert!(!event.intersects(url_active));
        let url_cleared = ThreatMask::product(&[ThreatType::Url], &[ThreatStatus::Cleared]);
        assert!(event.intersects(url_cleared));
        assert!(event.intersects(ThreatMask::default_filter()));

        let fp_only = ThreatMask::of(ThreatType::Url, ThreatStatus::FalsePositive);
        assert!(!fp_only.intersects(ThreatMask::default_filter()));
        assert!(fp_only.intersects(ThreatMask::everything()));
    }

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            let parsed = <EventKind as clap::ValueEnum>::from_str(k.array_name(), false);
            assert_eq!(parsed, Ok(k));
        }
        assert_eq!(
            ThreatType::parse("MESSAGETEXT"),
            Some(ThreatType::MessageText)
        );
        assert_eq!(
            ThreatStatus::parse("falsepositive"),
            Some(ThreatStatus::FalsePositive)
        );
        assert_eq!(ThreatStatus::parse("gone"), None);
    }
}
