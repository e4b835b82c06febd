//! The deterministic event generator.
//!
//! Time is cut into one-minute buckets counted from the simulator's start.
//! The events *filed* in bucket `b` of kind `k` are a pure function of
//! `(seed, k, b)`, so a window query regenerates only the buckets it covers
//! and nothing is kept in memory: a one-hour window costs 61 buckets whatever
//! the history length, and the same seed gives the same events (relative to
//! the start time) on every run.

use std::ops::ControlFlow;

use clap::ValueEnum;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::json_writer::ObjectWriter;
use crate::model::{EventKind, ThreatMask, ThreatType};
use crate::random::{self, alnum_string, hex_string, pick, rng_for, weighted};
use crate::source::{EventRef, EventSource, Visitor};
use crate::threats::{Category, ThreatInfo, ThreatPool};
use crate::timestamp::format_ms;

pub const BUCKET_MS: i64 = 60_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Which of the two disagreeing event shapes to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeMix {
    /// As the live API sends them (`threatID`, arrays, booleans, lower case).
    Live,
    /// As Proofpoint's documentation shows them (`threatId`, strings, upper case).
    Documented,
    /// Mostly live, about 20% documented.
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Live,
    Documented,
}

#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub events_per_hour: f64,
    /// Unix ms of the simulator's start; bucket 0 begins here.
    pub start_ms: i64,
    /// No events are filed before `start_ms - history_ms`.
    pub history_ms: i64,
    /// Indexing lag is uniform in `[0, max_lag_ms]`.
    pub max_lag_ms: i64,
    pub shape: ShapeMix,
}

/// One generated event with the metadata the server filters on.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedEvent {
    pub kind: EventKind,
    pub filed_ms: i64,
    pub visible_ms: i64,
    pub threats: ThreatMask,
    pub json: String,
}

impl GeneratedEvent {
    fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            kind: self.kind,
            threats: self.threats,
            json: &self.json,
        }
    }
}

/// Fixed per-seed facts about the simulated customer.
struct Tenant {
    /// Recipients (the customer's users) under example.com.
    users: Vec<String>,
    /// Sender addresses under example.org (and a few odd ones).
    senders: Vec<String>,
    cluster: String,
    /// Appears in `threatUrl` links.
    tenant_id: String,
}

const FIRST_NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yusuf", "zoe",
];
const LAST_NAMES: &[&str] = &[
    "smith", "jones", "garcia", "miller", "davis", "martin", "lee", "walker", "young", "king",
    "wright", "lopez", "hill", "green", "adams", "baker", "nelson", "carter",
];

impl Tenant {
    fn generate(seed: u64) -> Tenant {
        let mut rng = rng_for(&[seed, 0x7465_6e61_6e74]);
        let mut users: Vec<String> = Vec::new();
        while users.len() < 150 {
            let address = if rng.gen_bool(0.1) {
                // Some tenants see hashed local parts.
                format!("{}@example.com", hex_string(&mut rng, 32))
            } else {
                format!(
                    "{}.{}@example.com",
                    pick(&mut rng, FIRST_NAMES),
                    pick(&mut rng, LAST_NAMES)
                )
            };
            if !users.contains(&address) {
                users.push(address);
            }
        }
        let mut senders: Vec<String> = (0..60)
            .map(|_| {
                let domain = pick(
                    &mut rng,
                    &[
                        "example.org",
                        "mail.example.org",
                        "news.example.org",
                        "billing.example.org",
                        "example.com",
                    ],
                );
                let local = match rng.gen_range(0..10) {
                    0 => hex_string(&mut rng, 32),
                    1 => format!(
                        "bounce-{}-{}",
                        rng.gen_range(1000..99999),
                        alnum_string(&mut rng, 6)
                    ),
                    _ => format!(
                        "{}.{}",
                        pick(&mut rng, FIRST_NAMES),
                        pick(&mut rng, LAST_NAMES)
                    ),
                };
                format!("{local}@{domain}")
            })
            .collect();
        // A quoted local part trips strict address validators.
        senders.push("\"john smith\"@example.org".to_string());
        senders.push("info@example.org".to_string());
        Tenant {
            users,
            senders,
            cluster: "example_hosted".to_string(),
            tenant_id: random::uuid(&mut rng),
        }
    }
}

pub struct Generator {
    config: GeneratorConfig,
    pool: ThreatPool,
    tenant: Tenant,
}

/// Share of the event rate per kind.
fn kind_share(kind: EventKind) -> f64 {
    match kind {
        EventKind::MessagesDelivered => 0.40,
        EventKind::MessagesBlocked => 0.30,
        EventKind::ClicksPermitted => 0.15,
        EventKind::ClicksBlocked => 0.15,
    }
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Generator {
        let history_start = config.start_ms - config.history_ms;
        Generator {
            pool: ThreatPool::generate(config.seed, history_start),
            tenant: Tenant::generate(config.seed),
            config,
        }
    }

    pub fn history_start_ms(&self) -> i64 {
        self.config.start_ms - self.config.history_ms
    }

    /// The bucket holding instant `ms`.
    pub fn bucket_of(&self, ms: i64) -> i64 {
        (ms - self.config.start_ms).div_euclid(BUCKET_MS)
    }

    /// Every event of `kind` filed in bucket `bucket` (none before the
    /// history start), in generation order.
    pub fn bucket_events(&self, kind: EventKind, bucket: i64) -> Vec<GeneratedEvent> {
        let mut rng = rng_for(&[self.config.seed, kind.index() as u64, bucket as u64]);
        let expected = self.config.events_per_hour * kind_share(kind) / 60.0;
        // Vary the per-minute volume ±50% around the mean, keeping the mean.
        let scaled = expected * rng.gen_range(0.5..1.5);
        let count = scaled.floor() as usize + usize::from(rng.gen_bool(scaled.fract()));

        let bucket_start = self.config.start_ms + bucket * BUCKET_MS;
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let filed_ms = bucket_start + rng.gen_range(0..BUCKET_MS);
            let room = count - events.len();
            if kind.is_message() {
                self.message_events(&mut rng, kind, filed_ms, room, &mut events);
            } else {
                self.click_event(&mut rng, kind, filed_ms, &mut events);
            }
        }
        let history_start = self.history_start_ms();
        events.retain(|e| e.filed_ms >= history_start);
        events
    }

    fn pick_shape(&self, rng: &mut ChaCha8Rng) -> Shape {
        match self.config.shape {
            ShapeMix::Live => Shape::Live,
            ShapeMix::Documented => Shape::Documented,
            ShapeMix::Mixed if rng.gen_bool(0.2) => Shape::Documented,
            ShapeMix::Mixed => Shape::Live,
        }
    }

    fn lag_ms(&self, rng: &mut ChaCha8Rng) -> i64 {
        rng.gen_range(0..=self.config.max_lag_ms)
    }

    fn threat_url(&self, threat: &ThreatInfo, shape: Shape) -> String {
        match shape {
            Shape::Live => format!(
                "https://threatinsight.proofpoint.com/{}/threat/email/{}",
                self.tenant.tenant_id, threat.id
            ),
            Shape::Documented => format!(
                "https://threatinsight.proofpoint.com/#/{}/threat/u/{}",
                self.tenant.tenant_id, threat.id
            ),
        }
    }

    /// One message to up to `room` recipients: one event per recipient.
    fn message_events(
        &self,
        rng: &mut ChaCha8Rng,
        kind: EventKind,
        filed_ms: i64,
        room: usize,
        out: &mut Vec<GeneratedEvent>,
    ) {
        let message = self.plan_message(rng, kind, filed_ms, room);
        for recipient in &message.recipients {
            let id = match message.shape {
                // Documented-shape events may lack `id`.
                Shape::Documented if rng.gen_bool(0.5) => None,
                _ => Some(random::uuid(rng)),
            };
            let mut json = String::with_capacity(2048);
            match message.shape {
                Shape::Live => {
                    self.write_live_message(&mut json, &message, recipient, id.as_deref())
                }
                Shape::Documented => {
                    self.write_documented_message(&mut json, &message, recipient, id.as_deref())
                }
            }
            out.push(GeneratedEvent {
                kind,
                filed_ms,
                visible_ms: filed_ms + self.lag_ms(rng),
                threats: message.threat_mask,
                json,
            });
        }
    }

    fn plan_message<'p>(
        &'p self,
        rng: &mut ChaCha8Rng,
        kind: EventKind,
        filed_ms: i64,
        room: usize,
    ) -> PlannedMessage<'p> {
        let shape = self.pick_shape(rng);
        let sparse = shape == Shape::Live && rng.gen_bool(0.05);
        let blocked = kind == EventKind::MessagesBlocked;

        let wanted = *weighted(rng, &[(1usize, 55), (2, 25), (3, 12), (4, 8)]);
        let mut recipients: Vec<String> = Vec::new();
        while recipients.len() < wanted.min(room) {
            let user = pick(rng, &self.tenant.users);
            if !recipients.contains(user) {
                recipients.push(user.clone());
            }
        }
        let cc_count = if recipients.len() > 1 && rng.gen_bool(0.3) {
            1
        } else {
            0
        };
        let to_count = recipients.len() - cc_count;

        let threat_count = *weighted(rng, &[(1usize, 80), (2, 15), (3, 5)]);
        let mut threats: Vec<&ThreatInfo> = Vec::new();
        while threats.len() < threat_count {
            let threat = self.pool.pick(rng);
            if !threats.iter().any(|t| t.id == threat.id) {
                threats.push(threat);
            }
        }

        // Filed time = max(message time, threat times). A "late" message was
        // sent before its threat was identified and is filed at that later
        // identification time.
        let late = rng.gen_bool(0.25);
        let message_ms;
        let mut threat_times = Vec::with_capacity(threats.len());
        if late {
            message_ms = filed_ms - late_delay_ms(rng);
            threat_times.push(filed_ms);
            for _ in 1..threats.len() {
                threat_times.push(rng.gen_range(message_ms - 3 * DAY_MS..=filed_ms));
            }
        } else {
            message_ms = filed_ms;
            for _ in 0..threats.len() {
                threat_times.push(filed_ms - earlier_identification_ms(rng));
            }
        }

        let mut threat_mask = ThreatMask::default();
        for t in &threats {
            threat_mask.add(t.threat_type, t.status);
        }
        let main_category = threats[0].category;
        let sender = match threats
            .iter()
            .find(|t| t.threat_type == ThreatType::MessageText)
        {
            Some(t) => t.value.clone(),
            None => pick(rng, &self.tenant.senders).clone(),
        };

        let mut scores = Scores {
            spam: rng.gen_range(0..30),
            phish: rng.gen_range(0..30),
            malware: 0,
            impostor: 0,
        };
        match main_category {
            Category::Phish => scores.phish = rng.gen_range(80..=100),
            Category::Malware => scores.malware = 100,
            Category::Spam => scores.spam = rng.gen_range(90..=100),
            Category::Impostor => scores.impostor = rng.gen_range(50..=100),
        }

        let mut parts = vec![
            MessagePart::inline("text.txt", "text/plain", rng),
            MessagePart::inline("text.html", "text/html", rng),
        ];
        for t in threats
            .iter()
            .filter(|t| t.threat_type == ThreatType::Attachment)
        {
            parts.push(MessagePart::attachment(rng, Some(&t.id)));
        }
        if rng.gen_bool(0.15) {
            parts.push(MessagePart::attachment(rng, None));
        }
        parts.shuffle(rng);
        let parts = (!sparse && rng.gen_bool(0.97)).then_some(parts);

        let quarantine = if blocked && rng.gen_bool(0.8) {
            Some(match main_category {
                Category::Phish => ("Phish", "module.spam.rule.inbound_phish"),
                Category::Malware if parts.is_some() => {
                    ("Attachment Defense", "module.sandbox.threat")
                }
                Category::Malware => ("Malware", "module.av.rule.virus"),
                Category::Spam => ("Spam", "module.spam.rule.inbound_spam"),
                Category::Impostor => ("Impostor", "module.impostor.rule"),
            })
        } else {
            None
        };

        let display = pick(rng, FIRST_NAMES);
        let header_from = match rng.gen_range(0..3) {
            0 => format!("\"{display}\" <{sender}>"),
            1 => format!("<{sender}>"),
            _ => sender.clone(),
        };
        let reply_to = rng
            .gen_bool(0.2)
            .then(|| pick(rng, &self.tenant.senders).clone());
        let sender_domain = sender
            .rsplit('@')
            .next()
            .unwrap_or("example.org")
            .to_string();
        let message_id = match rng.gen_range(0..20) {
            0 => String::new(),
            1..=12 => format!("<{}@{}>", alnum_string(rng, 24), sender_domain),
            _ => format!(
                "{}.{}.mail@{}",
                rng.gen_range(10_000_000_000_000u64..99_999_999_999_999),
                rng.gen_range(10_000..99_999),
                sender_domain
            ),
        };

        let guid = match shape {
            Shape::Live => {
                let len = rng.gen_range(24..=34);
                alnum_string(rng, len)
            }
            Shape::Documented => random::uuid(rng),
        };
        let qid_len = rng.gen_range(12..=20);
        let qid = alnum_string(rng, qid_len);
        let modules_run = *pick(rng, MODULE_SETS);
        let policy_routes = *pick(rng, POLICY_ROUTES);

        PlannedMessage {
            shape,
            sparse,
            blocked,
            message_ms,
            threats,
            threat_times,
            threat_mask,
            recipients,
            to_count,
            sender,
            header_from,
            reply_to,
            sender_ip: documentation_ip(rng),
            subject: pick(rng, SUBJECTS).to_string(),
            message_id,
            guid,
            qid,
            scores,
            impostor_as_float: rng.gen_bool(0.5),
            message_size: rng.gen_range(1_000..3_000_000),
            parts,
            modules_run,
            policy_routes,
            quarantine,
            completely_rewritten: rng.gen_bool(0.7),
            xmailer: rng.gen_bool(0.5).then(|| *pick(rng, XMAILERS)),
        }
    }

    fn write_live_message(
        &self,
        out: &mut String,
        m: &PlannedMessage<'_>,
        recipient: &str,
        id: Option<&str>,
    ) {
        let mut o = ObjectWriter::new(out);
        o.int("spamScore", m.scores.spam)
            .int("phishScore", m.scores.phish);
        self.write_threats_info(&mut o, m, Shape::Live);
        o.string("messageTime", &format_ms(m.message_ms));
        if m.sparse || m.impostor_as_float {
            o.float("impostorScore", m.scores.impostor as f64);
        } else {
            o.int("impostorScore", m.scores.impostor);
        }
        o.int("malwareScore", m.scores.malware)
            .string("cluster", &self.tenant.cluster);
        if m.sparse {
            // Like the live API's sparse events: nearly everything null.
            for key in [
                "subject",
                "quarantineFolder",
                "quarantineRule",
                "policyRoutes",
                "modulesRun",
            ] {
                o.null(key);
            }
            o.int("messageSize", 0);
            for key in [
                "headerFrom",
                "headerReplyTo",
                "fromAddress",
                "ccAddresses",
                "replyToAddress",
                "toAddresses",
                "xmailer",
                "messageParts",
            ] {
                o.null(key);
            }
            o.bool("completelyRewritten", m.completely_rewritten);
            o.opt_string("id", id)
                .null("QID")
                .string("GUID", &m.guid)
                .string("sender", "")
                .strings("recipient", &[recipient])
                .string("senderIP", &m.sender_ip)
                .string("messageID", "");
            o.finish();
            return;
        }
        o.string("subject", &m.subject)
            .opt_string("quarantineFolder", m.quarantine.map(|q| q.0))
            .opt_string("quarantineRule", m.quarantine.map(|q| q.1))
            .strings("policyRoutes", m.policy_routes)
            .strings("modulesRun", m.modules_run)
            .int("messageSize", m.message_size)
            .string("headerFrom", &m.header_from)
            .opt_string("headerReplyTo", m.reply_to.as_deref())
            .strings("fromAddress", &[m.sender.as_str()])
            .strings("ccAddresses", &m.recipients[m.to_count..])
            .strings("replyToAddress", m.reply_to.as_slice())
            .strings("toAddresses", &m.recipients[..m.to_count])
            .opt_string("xmailer", m.xmailer);
        match &m.parts {
            Some(parts) => {
                o.objects("messageParts", parts, |p, part| part.write_live(p));
            }
            None => {
                o.null("messageParts");
            }
        }
        // Blocked messages are never rewritten.
        o.bool("completelyRewritten", !m.blocked && m.completely_rewritten);
        if let Some(id) = id {
            o.string("id", id);
        }
        o.string("QID", &m.qid)
            .string("GUID", &m.guid)
            .string("sender", &m.sender)
            .strings("recipient", &[recipient])
            .string("senderIP", &m.sender_ip)
            .string("messageID", &m.message_id);
        o.finish();
    }

    fn write_documented_message(
        &self,
        out: &mut String,
        m: &PlannedMessage<'_>,
        recipient: &str,
        id: Option<&str>,
    ) {
        let header_list = |addresses: &[String]| {
            addresses
                .iter()
                .map(|a| format!("<{a}>"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let cc = &m.recipients[m.to_count..];
        let rewritten = if m.blocked {
            "na"
        } else if m.completely_rewritten {
            "true"
        } else {
            "false"
        };
        let mut o = ObjectWriter::new(out);
        o.string("GUID", &m.guid)
            .string("QID", &m.qid)
            .strings("ccAddresses", cc)
            .string("clusterId", &self.tenant.cluster)
            .string("completelyRewritten", rewritten)
            .string("fromAddress", &m.sender)
            .opt_string(
                "headerCC",
                (!cc.is_empty()).then(|| header_list(cc)).as_deref(),
            )
            .string("headerFrom", &m.header_from)
            .opt_string("headerReplyTo", m.reply_to.as_deref())
            .string("headerTo", &header_list(&m.recipients[..m.to_count]));
        if let Some(id) = id {
            o.string("id", id);
        }
        o.int("impostorScore", m.scores.impostor)
            .int("malwareScore", m.scores.malware)
            .string("messageID", &m.message_id);
        match &m.parts {
            Some(parts) => {
                o.objects("messageParts", parts, |p, part| part.write_documented(p));
            }
            None => {
                o.null("messageParts");
            }
        }
        o.string("messageTime", &format_ms(m.message_ms))
            .strings("modulesRun", m.modules_run)
            .int("phishScore", m.scores.phish)
            .strings("policyRoutes", m.policy_routes)
            .opt_string("quarantineFolder", m.quarantine.map(|q| q.0))
            .opt_string("quarantineRule", m.quarantine.map(|q| q.1))
            .strings("recipient", &[recipient])
            .opt_strings(
                "replyToAddress",
                m.reply_to.as_ref().map(std::slice::from_ref),
            )
            .string("sender", &m.sender)
            .string("senderIP", &m.sender_ip)
            .int("spamScore", m.scores.spam)
            .string("subject", &m.subject);
        self.write_threats_info(&mut o, m, Shape::Documented);
        o.strings("toAddresses", &m.recipients[..m.to_count])
            .opt_string("xmailer", m.xmailer);
        o.finish();
    }

    fn write_threats_info(&self, o: &mut ObjectWriter<'_>, m: &PlannedMessage<'_>, shape: Shape) {
        let entries: Vec<(&ThreatInfo, i64)> = m
            .threats
            .iter()
            .copied()
            .zip(m.threat_times.iter().copied())
            .collect();
        o.objects("threatsInfoMap", &entries, |e, (threat, time_ms)| {
            let threat_url = self.threat_url(threat, shape);
            match shape {
                Shape::Live => {
                    e.string("threatID", &threat.id)
                        .string("threatStatus", threat.status.name())
                        .string("classification", threat.category.name())
                        .string("threatUrl", &threat_url)
                        .string("threatTime", &format_ms(*time_ms))
                        .string("threat", &threat.value)
                        .opt_string("campaignID", threat.campaign_id.as_deref())
                        .string(
                            "threatType",
                            &threat.threat_type.name().to_ascii_lowercase(),
                        );
                }
                Shape::Documented => {
                    e.opt_string("campaignId", threat.campaign_id.as_deref())
                        .string(
                            "classification",
                            &threat.category.name().to_ascii_uppercase(),
                        )
                        .string("threat", &threat.value)
                        .string("threatId", &threat.id)
                        .string("threatStatus", threat.status.name())
                        .string("threatTime", &format_ms(*time_ms))
                        .string(
                            "threatType",
                            &threat.threat_type.name().to_ascii_uppercase(),
                        )
                        .string("threatUrl", &threat_url);
                }
            }
        });
    }

    fn click_event(
        &self,
        rng: &mut ChaCha8Rng,
        kind: EventKind,
        filed_ms: i64,
        out: &mut Vec<GeneratedEvent>,
    ) {
        let shape = self.pick_shape(rng);
        let threat = self.pool.pick_url(rng);
        // Usually the URL was known bad before the click; sometimes it was
        // identified only afterwards (the event is then filed late).
        let (click_ms, threat_ms) = if rng.gen_bool(0.2) {
            (filed_ms - late_delay_ms(rng), filed_ms)
        } else {
            (filed_ms, filed_ms - earlier_identification_ms(rng))
        };
        let url = if rng.gen_bool(0.3) {
            format!("{}#{}", threat.value, pick(rng, &self.tenant.users))
        } else {
            threat.value.clone()
        };
        let campaign_id = match shape {
            Shape::Live => threat.campaign_id.clone(),
            Shape::Documented => Some(
                threat
                    .campaign_id
                    .clone()
                    .unwrap_or_else(|| random::uuid(rng)),
            ),
        };
        let id = match shape {
            Shape::Documented if rng.gen_bool(0.5) => None,
            _ => Some(random::uuid(rng)),
        };
        let recipient = pick(rng, &self.tenant.users);
        let sender = pick(rng, &self.tenant.senders);
        let click_ip = documentation_ip(rng);
        let sender_ip = documentation_ip(rng);
        let guid = alnum_string(rng, 32);
        let message_id = format!(
            "<{}@{}>",
            alnum_string(rng, 20),
            sender.rsplit('@').next().unwrap_or("example.org")
        );
        let user_agent = pick(rng, USER_AGENTS);
        let threat_url = self.threat_url(threat, shape);
        let click_time = format_ms(click_ms);
        let threat_time = format_ms(threat_ms);

        let mut json = String::with_capacity(1024);
        let mut o = ObjectWriter::new(&mut json);
        match shape {
            Shape::Live => {
                o.string("url", &url)
                    .string("classification", threat.category.name())
                    .string("clickTime", &click_time)
                    .string("threatTime", &threat_time)
                    .string("userAgent", user_agent)
                    .opt_string("campaignId", campaign_id.as_deref())
                    .opt_string("id", id.as_deref())
                    .string("clickIP", &click_ip)
                    .string("sender", sender)
                    .string("recipient", recipient)
                    .string("senderIP", &sender_ip)
                    .string("GUID", &guid)
                    .string("threatID", &threat.id)
                    .string("threatURL", &threat_url)
                    .string("threatStatus", threat.status.name())
                    .string("messageID", &message_id);
            }
            Shape::Documented => {
                o.opt_string("campaignId", campaign_id.as_deref())
                    .string(
                        "classification",
                        &threat.category.name().to_ascii_uppercase(),
                    )
                    .string("clickIP", &click_ip)
                    .string("clickTime", &click_time)
                    .string("GUID", &guid);
                if let Some(id) = &id {
                    o.string("id", id);
                }
                o.string("messageID", &message_id)
                    .string("recipient", recipient)
                    .string("sender", sender)
                    .string("senderIP", &sender_ip)
                    .string("threatID", &threat.id)
                    .string("threatTime", &threat_time)
                    .string("threatURL", &threat_url)
                    .string("threatStatus", threat.status.name())
                    .string("url", &url)
                    .string("userAgent", user_agent);
            }
        }
        o.finish();
        out.push(GeneratedEvent {
            kind,
            filed_ms,
            visible_ms: filed_ms + self.lag_ms(rng),
            threats: ThreatMask::of(ThreatType::Url, threat.status),
            json,
        });
    }
}

/// How long before its (late) filed time a message/click happened: mostly
/// minutes, sometimes hours.
fn late_delay_ms(rng: &mut ChaCha8Rng) -> i64 {
    let u: f64 = rng.gen();
    1_000 + (u * u * u * 6.0 * HOUR_MS as f64) as i64
}

/// How long before the event its threat was already known: often the same
/// instant, else minutes to days.
fn earlier_identification_ms(rng: &mut ChaCha8Rng) -> i64 {
    if rng.gen_bool(0.4) {
        0
    } else {
        let u: f64 = rng.gen();
        MINUTE_MS + (u * u * 10.0 * DAY_MS as f64) as i64
    }
}

/// An address in the RFC 5737 documentation ranges.
fn documentation_ip(rng: &mut ChaCha8Rng) -> String {
    let prefix = pick(rng, &["192.0.2", "198.51.100", "203.0.113"]);
    format!("{prefix}.{}", rng.gen_range(1..255))
}

struct Scores {
    spam: i64,
    phish: i64,
    malware: i64,
    impostor: i64,
}

/// Everything the per-recipient events of one message share.
struct PlannedMessage<'p> {
    shape: Shape,
    sparse: bool,
    blocked: bool,
    message_ms: i64,
    threats: Vec<&'p ThreatInfo>,
    threat_times: Vec<i64>,
    threat_mask: ThreatMask,
    recipients: Vec<String>,
    /// `recipients[..to_count]` are To:, the rest Cc:.
    to_count: usize,
    sender: String,
    header_from: String,
    reply_to: Option<String>,
    sender_ip: String,
    subject: String,
    message_id: String,
    guid: String,
    qid: String,
    scores: Scores,
    impostor_as_float: bool,
    message_size: i64,
    parts: Option<Vec<MessagePart>>,
    modules_run: &'static [&'static str],
    policy_routes: &'static [&'static str],
    quarantine: Option<(&'static str, &'static str)>,
    completely_rewritten: bool,
    xmailer: Option<&'static str>,
}

struct MessagePart {
    disposition: &'static str,
    sha256: String,
    md5: String,
    filename: String,
    sandbox_status: Option<&'static str>,
    content_type: &'static str,
}

impl MessagePart {
    fn inline(filename: &str, content_type: &'static str, rng: &mut ChaCha8Rng) -> MessagePart {
        MessagePart {
            disposition: "inline",
            sha256: hex_string(rng, 64),
            md5: hex_string(rng, 32),
            filename: filename.to_string(),
            sandbox_status: None,
            content_type,
        }
    }

    /// An attachment; with `threat_hash` it is the malicious one.
    fn attachment(rng: &mut ChaCha8Rng, threat_hash: Option<&str>) -> MessagePart {
        let (extension, content_type) = *pick(
            rng,
            &[
                ("docm", "application/vnd.ms-word.document.macroEnabled.12"),
                ("zip", "application/zip"),
                ("pdf", "application/pdf"),
                ("html", "text/html"),
                (
                    "xlsx",
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                ),
            ],
        );
        let stem = pick(
            rng,
            &["invoice", "statement", "scan", "order", "remittance"],
        );
        MessagePart {
            disposition: "attached",
            sha256: threat_hash.map_or_else(|| hex_string(rng, 64), str::to_string),
            md5: hex_string(rng, 32),
            filename: format!("{stem}_{}.{extension}", rng.gen_range(1000..9999)),
            sandbox_status: Some(if threat_hash.is_some() {
                "threat"
            } else {
                "clean"
            }),
            content_type,
        }
    }

    fn write_live(&self, o: &mut ObjectWriter<'_>) {
        o.string("disposition", self.disposition)
            .string("sha256", &self.sha256)
            .string("md5", &self.md5)
            .string("filename", &self.filename)
            .opt_string("sandboxStatus", self.sandbox_status)
            .string("oContentType", self.content_type)
            .string("contentType", self.content_type);
    }

    fn write_documented(&self, o: &mut ObjectWriter<'_>) {
        o.string("contentType", self.content_type)
            .string("disposition", self.disposition)
            .string("filename", &self.filename)
            .string("md5", &self.md5)
            .string("oContentType", self.content_type)
            .string(
                "sandboxStatus",
                self.sandbox_status.unwrap_or("unsupported"),
            )
            .string("sha256", &self.sha256);
    }
}

const SUBJECTS: &[&str] = &[
    "Invoice #44821 overdue",
    "Your mailbox is almost full",
    "Re: Delayed Mail (still being retried)",
    "Shared document: Q3 budget.xlsx",
    "Action required: verify your account",
    "Speakers Announced | Ecosystem Days Summit",
    "RSVP today to Join Transpose Platform’s Ecosystem Days Summit",
    "Payment remittance advice",
    "Urgent wire transfer",
    "DHL: parcel on hold",
    "Password expires today",
    "Meeting notes",
];

const MODULE_SETS: &[&[&str]] = &[
    &[
        "av",
        "zerohour",
        "spf",
        "dkimv",
        "spam",
        "pdr",
        "urldefense",
    ],
    &["av", "zerohour", "dkimv", "spf", "spam", "dmarc", "pdr"],
    &["pdr", "sandbox", "spam", "urldefense"],
    &["av", "spam", "urldefense", "sandbox", "impostor"],
];

const POLICY_ROUTES: &[&[&str]] = &[
    &["default_inbound"],
    &["default_inbound"],
    &["default_inbound", "executives"],
    &["bypass_maxsize", "default_inbound"],
];

const XMAILERS: &[&str] = &[
    "Microsoft Outlook 16.0",
    "Mailchimp Mailer - **CID5f81d23a9b**",
    "PHPMailer 6.5.0",
    "Spambot v2.5",
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17126; Pro)",
];

impl EventSource for Generator {
    fn visit_window(
        &self,
        kind: EventKind,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        order_seed: u64,
        visit: &mut Visitor<'_>,
    ) -> ControlFlow<()> {
        // Nothing filed after `now` can be visible yet.
        let to_ms = to_ms.min(now_ms + 1);
        let from_ms = from_ms.max(self.history_start_ms());
        if from_ms >= to_ms {
            return ControlFlow::Continue(());
        }
        let mut order = rng_for(&[order_seed]);
        let mut buckets: Vec<i64> = (self.bucket_of(from_ms)..=self.bucket_of(to_ms - 1)).collect();
        buckets.shuffle(&mut order);
        for bucket in buckets {
            let events = self.bucket_events(kind, bucket);
            let mut matching: Vec<&GeneratedEvent> = events
                .iter()
                .filter(|e| (from_ms..to_ms).contains(&e.filed_ms) && e.visible_ms <= now_ms)
                .collect();
            matching.shuffle(&mut order);
            for event in matching {
                visit(event.as_ref())?;
            }
        }
        ControlFlow::Continue(())
    }

    fn visit_visible(
        &self,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
        visit: &mut Visitor<'_>,
    ) -> ControlFlow<()> {
        let to_ms = to_ms.min(now_ms + 1);
        let from_ms = from_ms.max(self.history_start_ms());
        if from_ms >= to_ms {
            return ControlFlow::Continue(());
        }
        for bucket in self.bucket_of(from_ms)..=self.bucket_of(to_ms - 1) {
            let mut events: Vec<GeneratedEvent> = EventKind::ALL
                .into_iter()
                .flat_map(|kind| self.bucket_events(kind, bucket))
                .filter(|e| (from_ms..to_ms).contains(&e.filed_ms) && e.visible_ms <= now_ms)
                .collect();
            events.sort_by_key(|e| e.filed_ms);
            for event in &events {
                visit(event.as_ref())?;
            }
        }
        ControlFlow::Continue(())
    }

    fn threat(&self, id: &str) -> Option<ThreatInfo> {
        self.pool.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ThreatStatus;
    use crate::timestamp::parse_timestamp;
    use serde_json::Value;

    const START: i64 = 1_715_000_000_000;

    fn generator(seed: u64, rate: f64, max_lag_min: i64, shape: ShapeMix) -> Generator {
        Generator::new(GeneratorConfig {
            seed,
            events_per_hour: rate,
            start_ms: START,
            history_ms: 24 * HOUR_MS,
            max_lag_ms: max_lag_min * MINUTE_MS,
            shape,
        })
    }

    fn time_ms(value: &Value) -> i64 {
        crate::timestamp::floor_ms(parse_timestamp(value.as_str().unwrap()).unwrap().0)
    }

    /// Filed time recomputed from the JSON alone, as a connector would.
    fn filed_from_json(kind: EventKind, event: &Value) -> i64 {
        if kind.is_message() {
            let mut filed = time_ms(&event["messageTime"]);
            for t in event["threatsInfoMap"].as_array().unwrap() {
                filed = filed.max(time_ms(&t["threatTime"]));
            }
            filed
        } else {
            time_ms(&event["clickTime"]).max(time_ms(&event["threatTime"]))
        }
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a = generator(3, 600.0, 30, ShapeMix::Mixed);
        let b = generator(3, 600.0, 30, ShapeMix::Mixed);
        let c = generator(4, 600.0, 30, ShapeMix::Mixed);
        for kind in EventKind::ALL {
            for bucket in [-5, 0, 17] {
                assert_eq!(a.bucket_events(kind, bucket), b.bucket_events(kind, bucket));
            }
            assert_ne!(a.bucket_events(kind, 0), c.bucket_events(kind, 0));
        }
    }

    #[test]
    fn bucket_events_are_valid_json_filed_in_their_bucket() {
        let g = generator(1, 6000.0, 30, ShapeMix::Mixed);
        for kind in EventKind::ALL {
            for bucket in -3..3 {
                for e in g.bucket_events(kind, bucket) {
                    let v: Value = serde_json::from_str(&e.json).unwrap();
                    assert_eq!(g.bucket_of(e.filed_ms), bucket);
                    assert_eq!(filed_from_json(kind, &v), e.filed_ms, "{}", e.json);
                    assert!((0..=30 * MINUTE_MS).contains(&(e.visible_ms - e.filed_ms)));
                    assert!(!e.threats.is_empty());
                }
            }
        }
    }

    #[test]
    fn rate_is_respected_on_average() {
        let g = generator(9, 1200.0, 0, ShapeMix::Live);
        let total: usize = (0..60)
            .flat_map(|b| EventKind::ALL.map(|k| g.bucket_events(k, b).len()))
            .sum();
        assert!(
            (1000..1400).contains(&total),
            "{total} events in an hour at 1200/h"
        );
    }

    #[test]
    fn one_event_per_recipient_sharing_guid_and_time() {
        let g = generator(2, 6000.0, 0, ShapeMix::Live);
        let events: Vec<Value> = (0..10)
            .flat_map(|b| g.bucket_events(EventKind::MessagesDelivered, b))
            .map(|e| serde_json::from_str(&e.json).unwrap())
            .collect();
        let mut by_guid: std::collections::HashMap<String, Vec<&Value>> = Default::default();
        for e in &events {
            assert_eq!(e["recipient"].as_array().unwrap().len(), 1);
            by_guid
                .entry(e["GUID"].as_str().unwrap().into())
                .or_default()
                .push(e);
        }
        let multi: Vec<_> = by_guid.values().filter(|v| v.len() > 1).collect();
        assert!(!multi.is_empty(), "no multi-recipient message generated");
        for group in multi {
            let ids: std::collections::HashSet<_> =
                group.iter().map(|e| e["id"].as_str()).collect();
            let recipients: std::collections::HashSet<_> =
                group.iter().map(|e| e["recipient"][0].as_str()).collect();
            assert_eq!(ids.len(), group.len(), "ids must differ per recipient");
            assert_eq!(recipients.len(), group.len());
            assert!(group
                .iter()
                .all(|e| e["messageTime"] == group[0]["messageTime"]));
            assert!(group.iter().all(|e| e["QID"] == group[0]["QID"]));
        }
    }

    #[test]
    fn both_shapes_and_the_odd_cases_appear() {
        let g = generator(5, 20_000.0, 0, ShapeMix::Mixed);
        let mut live_threat_id = false;
        let mut documented_threat_id = false;
        let mut sparse = false;
        let mut late = false;
        let mut null_parts = false;
        let mut statuses = std::collections::HashSet::new();
        for bucket in 0..10 {
            for e in g.bucket_events(EventKind::MessagesDelivered, bucket) {
                let v: Value = serde_json::from_str(&e.json).unwrap();
                let threat = &v["threatsInfoMap"][0];
                live_threat_id |= threat.get("threatID").is_some() && v["fromAddress"].is_array();
                documented_threat_id |= threat.get("threatId").is_some()
                    && v["fromAddress"].is_string()
                    && v["completelyRewritten"].is_string();
                sparse |= v["sender"] == "" && v["subject"].is_null();
                late |= time_ms(&v["messageTime"]) < e.filed_ms;
                null_parts |= v["messageParts"].is_null();
                statuses.insert(threat["threatStatus"].as_str().unwrap().to_string());
            }
            for e in g.bucket_events(EventKind::ClicksPermitted, bucket) {
                let v: Value = serde_json::from_str(&e.json).unwrap();
                assert!(v["recipient"].is_string());
            }
        }
        assert!(live_threat_id && documented_threat_id && sparse && late && null_parts);
        for status in ThreatStatus::ALL {
            assert!(
                statuses.contains(status.name()),
                "{status:?} never generated"
            );
        }
    }

    #[test]
    fn visibility_lag_hides_recent_events() {
        let g = generator(7, 3000.0, 30, ShapeMix::Live);
        let kind = EventKind::MessagesBlocked;
        let (from, to) = (START, START + 10 * MINUTE_MS);
        let count_at = |now: i64| {
            let mut n = 0;
            let _ = g.visit_window(kind, from, to, now, 1, &mut |_| {
                n += 1;
                ControlFlow::Continue(())
            });
            n
        };
        let all: usize = (0..10).map(|b| g.bucket_events(kind, b).len()).sum();
        let just_closed = count_at(to);
        let later = count_at(to + 15 * MINUTE_MS);
        let settled = count_at(to + 30 * MINUTE_MS);
        assert!(
            just_closed < later && later < settled,
            "{just_closed} {later} {settled}"
        );
        assert_eq!(settled, all);

        // With no lag everything is visible as soon as it is filed.
        let g0 = generator(7, 3000.0, 0, ShapeMix::Live);
        let mut n = 0;
        let _ = g0.visit_window(kind, from, to, to, 1, &mut |_| {
            n += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(n, all);
    }

    #[test]
    fn window_is_half_open_and_history_bounded() {
        let g = generator(11, 3000.0, 0, ShapeMix::Live);
        let kind = EventKind::ClicksBlocked;
        let now = START + HOUR_MS;
        let collect = |from: i64, to: i64| {
            let mut seen = Vec::new();
            let _ = g.visit_window(kind, from, to, now, 3, &mut |e| {
                seen.push(filed_from_json(
                    kind,
                    &serde_json::from_str(e.json).unwrap(),
                ));
                ControlFlow::Continue(())
            });
            seen
        };
        let whole = collect(START, START + 20 * MINUTE_MS);
        let split = START + 7 * MINUTE_MS + 12_345;
        let mut parts = collect(START, split);
        parts.extend(collect(split, START + 20 * MINUTE_MS));
        assert!(whole
            .iter()
            .all(|t| (START..START + 20 * MINUTE_MS).contains(t)));
        let (mut whole, mut parts) = (whole, parts);
        whole.sort();
        parts.sort();
        assert_eq!(whole, parts);

        let before_history = START - 25 * HOUR_MS;
        assert!(collect(before_history, before_history + HOUR_MS).is_empty());
        let around_history_start = collect(
            START - 24 * HOUR_MS - 30 * MINUTE_MS,
            START - 23 * HOUR_MS - 30 * MINUTE_MS,
        );
        assert!(!around_history_start.is_empty());
        assert!(around_history_start
            .iter()
            .all(|&t| t >= START - 24 * HOUR_MS));
    }

    #[test]
    fn window_order_is_shuffled_but_deterministic() {
        let g = generator(13, 6000.0, 0, ShapeMix::Live);
        let order = |seed: u64| {
            let mut ids = Vec::new();
            let _ = g.visit_window(
                EventKind::MessagesDelivered,
                START,
                START + 30 * MINUTE_MS,
                START + HOUR_MS,
                seed,
                &mut |e| {
                    ids.push(e.json.to_string());
                    ControlFlow::Continue(())
                },
            );
            ids
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
    }

    #[test]
    fn threats_come_from_the_pool() {
        let g = generator(1, 3000.0, 0, ShapeMix::Live);
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for bucket in 0..30 {
            for e in g.bucket_events(EventKind::ClicksPermitted, bucket) {
                let v: Value = serde_json::from_str(&e.json).unwrap();
                let id = v["threatID"].as_str().unwrap().to_string();
                assert!(g.threat(&id).is_some());
                *seen.entry(id).or_default() += 1;
            }
        }
        assert!(seen.values().any(|&n| n > 1), "threat ids should repeat");
    }
}
