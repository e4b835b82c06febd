//! Threats: the seeded pool generated events draw from (so threat ids repeat
//! across events, as in a real tenant), and the Threat API summary document.

use std::collections::HashMap;

use rand::Rng;
use serde::Serialize;

use crate::model::{ThreatStatus, ThreatType};
use crate::random::{self, hash_str, hex_string, rng_for, uuid_for_name, weighted};
use crate::timestamp::format_seconds_z;
use crate::timestamp::ms_to_datetime;

/// `classification` of an event's threat / `category` of a summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Phish,
    Malware,
    Spam,
    Impostor,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Phish,
        Category::Malware,
        Category::Spam,
        Category::Impostor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Phish => "phish",
            Category::Malware => "malware",
            Category::Spam => "spam",
            Category::Impostor => "impostor",
        }
    }

    pub fn parse(text: &str) -> Option<Category> {
        Category::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(text))
    }
}

/// What the simulator knows about one threat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreatInfo {
    pub id: String,
    pub threat_type: ThreatType,
    pub category: Category,
    pub status: ThreatStatus,
    pub identified_at_ms: i64,
    /// The event's `threat` value: a URL, an attachment's SHA-256, or a
    /// message-text marker.
    pub value: String,
    /// `campaignID`; the live API mostly sends null.
    pub campaign_id: Option<String>,
}

/// The fixed set of threats generated events refer to.
pub struct ThreatPool {
    threats: Vec<ThreatInfo>,
    by_id: HashMap<String, usize>,
    /// Clicks can only be on URL threats.
    url_threats: Vec<usize>,
}

/// Enough distinct threats for variety, few enough that ids repeat a lot.
pub const POOL_SIZE: usize = 300;

impl ThreatPool {
    /// Threats identified in the two weeks before `identified_before_ms`.
    pub fn generate(seed: u64, identified_before_ms: i64) -> ThreatPool {
        let mut rng = rng_for(&[seed, 0x7472_6561_7473]);
        let campaigns: Vec<String> = (0..12).map(|_| random::uuid(&mut rng)).collect();
        let threats: Vec<ThreatInfo> = (0..POOL_SIZE)
            .map(|_| {
                let threat_type = *weighted(
                    &mut rng,
                    &[
                        (ThreatType::Url, 70),
                        (ThreatType::Attachment, 20),
                        (ThreatType::MessageText, 10),
                    ],
                );
                let category = *match threat_type {
                    ThreatType::Url => weighted(
                        &mut rng,
                        &[
                            (Category::Phish, 60),
                            (Category::Malware, 20),
                            (Category::Spam, 20),
                        ],
                    ),
                    ThreatType::Attachment => {
                        weighted(&mut rng, &[(Category::Malware, 80), (Category::Phish, 20)])
                    }
                    ThreatType::MessageText => weighted(
                        &mut rng,
                        &[
                            (Category::Impostor, 70),
                            (Category::Phish, 15),
                            (Category::Spam, 15),
                        ],
                    ),
                };
                let status = *weighted(
                    &mut rng,
                    &[
                        (ThreatStatus::Active, 80),
                        (ThreatStatus::Cleared, 14),
                        (ThreatStatus::FalsePositive, 6),
                    ],
                );
                let id = hex_string(&mut rng, 64);
                let value = match threat_type {
                    ThreatType::Url => threat_url(&mut rng),
                    ThreatType::Attachment => id.clone(),
                    ThreatType::MessageText => format!(
                        "{}@{}",
                        random::pick(&mut rng, &["ceo", "payroll", "finance", "it-support"]),
                        random::pick(&mut rng, &["example.org", "mail.example.org"])
                    ),
                };
                let campaign_id = rng
                    .gen_bool(0.3)
                    .then(|| random::pick(&mut rng, &campaigns).clone());
                let identified_at_ms = identified_before_ms - rng.gen_range(0..14 * 86_400_000i64);
                ThreatInfo {
                    id,
                    threat_type,
                    category,
                    status,
                    identified_at_ms,
                    value,
                    campaign_id,
                }
            })
            .collect();
        let by_id = threats
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let url_threats = threats
            .iter()
            .enumerate()
            .filter(|(_, t)| t.threat_type == ThreatType::Url)
            .map(|(i, _)| i)
            .collect();
        ThreatPool {
            threats,
            by_id,
            url_threats,
        }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> &ThreatInfo {
        random::pick(rng, &self.threats)
    }

    pub fn pick_url(&self, rng: &mut impl Rng) -> &ThreatInfo {
        &self.threats[*random::pick(rng, &self.url_threats)]
    }

    pub fn get(&self, id: &str) -> Option<&ThreatInfo> {
        self.by_id.get(id).map(|&i| &self.threats[i])
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &ThreatInfo> {
        self.threats.iter()
    }
}

fn threat_url(rng: &mut impl Rng) -> String {
    let word = |rng: &mut _| {
        *random::pick(
            rng,
            &[
                "login", "secure", "verify", "account", "docs", "share", "invoice", "update",
                "portal", "files",
            ],
        )
    };
    match rng.gen_range(0..3) {
        0 => format!(
            "https://{}-{}.example.org/{}",
            word(rng),
            word(rng),
            random::alnum_string(rng, 12)
        ),
        1 => format!(
            "http://{}.example.com/{}/{}",
            random::alnum_string(rng, 10).to_ascii_lowercase(),
            word(rng),
            random::alnum_string(rng, 8)
        ),
        _ => format!(
            "https://www.example.org/{}?id={}",
            word(rng),
            hex_string(rng, 16)
        ),
    }
}

/// `{id, name}` items of a summary's lists.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct NamedRef {
    pub id: String,
    pub name: String,
}

impl NamedRef {
    fn new(name: &str) -> NamedRef {
        NamedRef {
            id: uuid_for_name(name),
            name: name.to_string(),
        }
    }
}

/// `GET /v2/threat/summary/{id}` body.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ThreatSummary {
    pub id: String,
    pub identified_at: String,
    pub name: String,
    #[serde(rename = "type")]
    pub threat_type: &'static str,
    pub category: &'static str,
    pub status: &'static str,
    pub detection_type: &'static str,
    pub severity_score: u32,
    pub attack_spread: u32,
    pub notable: bool,
    pub vertically_targeted: bool,
    pub geo_targeted: bool,
    pub actors: Vec<NamedRef>,
    pub families: Vec<NamedRef>,
    pub malware: Vec<NamedRef>,
    pub techniques: Vec<NamedRef>,
    pub brands: Vec<NamedRef>,
}

/// Builds a summary; details not in `info` are a pure function of the id.
pub fn summarize(info: &ThreatInfo) -> ThreatSummary {
    let mut rng = rng_for(&[hash_str(&info.id)]);
    let some = |rng: &mut rand_chacha::ChaCha8Rng, p: f64, names: &[&str]| -> Vec<NamedRef> {
        if rng.gen_bool(p) {
            let name = *random::pick(rng, names);
            vec![NamedRef::new(name)]
        } else {
            Vec::new()
        }
    };
    let actors = some(
        &mut rng,
        0.3,
        &["TA505", "TA542", "TA570", "TA577", "TA4557"],
    );
    let families = vec![NamedRef::new(match info.category {
        Category::Phish => "Credential Phishing",
        Category::Malware => "Malware Delivery",
        Category::Spam => "Spam",
        Category::Impostor => "Business Email Compromise",
    })];
    let malware = if info.category == Category::Malware {
        some(
            &mut rng,
            0.9,
            &["Emotet", "Qbot", "IcedID", "AgentTesla", "Remcos"],
        )
    } else {
        Vec::new()
    };
    let techniques = some(
        &mut rng,
        0.6,
        &[
            "Malicious Macro",
            "HTML Smuggling",
            "Credential Harvesting Page",
            "Display Name Spoofing",
            "Password-protected Archive",
        ],
    );
    let brands = if info.category == Category::Phish {
        some(
            &mut rng,
            0.7,
            &["Microsoft", "DocuSign", "Adobe", "DHL", "PayPal"],
        )
    } else {
        Vec::new()
    };
    let detection_type = *random::pick(
        &mut rng,
        &["sandbox", "reputation", "signature", "behavioral"],
    );
    ThreatSummary {
        id: info.id.clone(),
        identified_at: format_seconds_z(ms_to_datetime(info.identified_at_ms)),
        name: info.value.clone(),
        threat_type: info.threat_type.name(),
        category: info.category.name(),
        status: info.status.name(),
        detection_type,
        severity_score: rng.gen_range(100..=1000),
        attack_spread: rng.gen_range(1..=500),
        notable: rng.gen_bool(0.1),
        vertically_targeted: rng.gen_bool(0.2),
        geo_targeted: rng.gen_bool(0.15),
        actors,
        families,
        malware,
        techniques,
        brands,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_deterministic_and_mixed() {
        let a = ThreatPool::generate(5, 1_700_000_000_000);
        let b = ThreatPool::generate(5, 1_700_000_000_000);
        let c = ThreatPool::generate(6, 1_700_000_000_000);
        assert!(a.iter().eq(b.iter()));
        assert!(!a.iter().eq(c.iter()));
        for status in ThreatStatus::ALL {
            assert!(a.iter().any(|t| t.status == status), "{status:?} missing");
        }
        for threat_type in ThreatType::ALL {
            assert!(a.iter().any(|t| t.threat_type == threat_type));
        }
        let first = a.iter().next().unwrap();
        assert_eq!(a.get(&first.id), Some(first));
        assert!(a.get("nope").is_none());
    }

    #[test]
    fn summary_has_the_documented_fields() {
        let pool = ThreatPool::generate(1, 1_700_000_000_000);
        let info = pool.iter().next().unwrap();
        let summary = serde_json::to_value(summarize(info)).unwrap();
        for field in [
            "id",
            "identifiedAt",
            "name",
            "type",
            "category",
            "status",
            "detectionType",
            "severityScore",
            "attackSpread",
            "notable",
            "verticallyTargeted",
            "geoTargeted",
            "actors",
            "families",
            "malware",
            "techniques",
            "brands",
        ] {
            assert!(summary.get(field).is_some(), "{field} missing");
        }
        assert_eq!(summary["id"], info.id.as_str());
        assert_eq!(summarize(info), summarize(info));
    }
}
