//! Configuration of the response actions: `[[ad]]` targets (Active Directory
//! domain controllers the host may act on) and, per connector,
//! `[connector.response.disable_user]` (the policy the component applies).

use super::super::config::SecretSource;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One `[[ad]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct AdTarget {
    pub name: String,
    /// `ldaps://host:636`, or `ldap://host:389` with `starttls`.
    pub url: String,
    pub starttls: bool,
    pub bind_dn: String,
    pub password: SecretSource,
    pub base_dn: String,
    /// PEM file with the CA certificate(s) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Accounts (mail, UPN, sAMAccountName or DN) or groups (name or DN)
    /// never disabled, nor their members.
    pub protected: Vec<String>,
    /// Seconds one LDAP operation (connect, bind, search, modify) may take.
    pub timeout_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAd {
    name: String,
    url: String,
    #[serde(default)]
    starttls: bool,
    bind_dn: String,
    password_env: Option<String>,
    password_file: Option<String>,
    base_dn: String,
    ca_file: String,
    #[serde(default)]
    protected: Vec<String>,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
}

fn default_timeout_secs() -> u64 {
    30
}

impl AdTarget {
    /// Parses and checks one `[[ad]]` table; relative paths are anchored at `base`.
    pub fn from_toml(
        value: toml::Value,
        base: &Path,
    ) -> std::result::Result<AdTarget, Vec<String>> {
        let raw: RawAd = value.try_into().map_err(|e: toml::de::Error| {
            vec![format!(
                "{} (keys: name, url, starttls, bind_dn, password_env or password_file, base_dn, ca_file, protected, timeout_secs)",
                e.message()
            )]
        })?;
        let label = format!("[[ad]] `{}`", raw.name);
        let mut problems = Vec::new();
        if let Err(e) = crate::config::check_name(&raw.name) {
            problems.push(format!("[[ad]] name {e}"));
        }
        if let Err(e) = check_url(&raw.url, raw.starttls) {
            problems.push(format!("{label}: {e}"));
        }
        let password = match (raw.password_env, raw.password_file) {
            (Some(var), None) => Some(SecretSource::Env(var)),
            (None, Some(file)) => Some(SecretSource::File(anchor(base, &file))),
            _ => {
                problems.push(format!(
                    "{label}: give exactly one of `password_env` (a variable name) or `password_file` (a file holding the bind password)"
                ));
                None
            }
        };
        if raw.bind_dn.trim().is_empty() {
            problems.push(format!(
                "{label}: `bind_dn` must name the service account (user@domain or its DN)"
            ));
        }
        if !raw.base_dn.contains('=') {
            problems.push(format!(
                "{label}: `base_dn` `{}` is not a DN: use the domain root, e.g. DC=corp,DC=example",
                raw.base_dn
            ));
        }
        if raw.timeout_secs == 0 || raw.timeout_secs > 600 {
            problems.push(format!("{label}: `timeout_secs` must be from 1 to 600"));
        }
        let ca_file = anchor(base, &raw.ca_file);
        if !ca_file.is_file() {
            problems.push(format!(
                "{label}: `ca_file` {} does not exist: give the PEM file of the CA that issued the domain controller's certificate",
                ca_file.display()
            ));
        }
        if let Some(p) = raw.protected.iter().find(|p| p.trim().is_empty()) {
            problems.push(format!("{label}: `protected` holds an empty entry {p:?}"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AdTarget {
            name: raw.name,
            url: raw.url,
            starttls: raw.starttls,
            bind_dn: raw.bind_dn,
            password: password.expect("checked"),
            base_dn: raw.base_dn,
            ca_file,
            protected: raw.protected,
            timeout_secs: raw.timeout_secs,
        })
    }

    /// The bind password, read now (a rotated file or variable takes effect
    /// without a restart).
    pub fn password(&self) -> Result<String> {
        let secret = match &self.password {
            SecretSource::Env(var) => std::env::var(var).with_context(|| {
                format!(
                    "[[ad]] `{}`: the environment variable {var} named by `password_env` is not set",
                    self.name
                )
            })?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "[[ad]] `{}`: cannot read `password_file` {}",
                        self.name,
                        path.display()
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            SecretSource::Inline(s) => s.clone(),
        };
        if secret.is_empty() {
            bail!("[[ad]] `{}`: the bind password is empty", self.name);
        }
        Ok(secret)
    }
}

/// Only encrypted transports: a simple bind sends the password as is.
pub fn check_url(url: &str, starttls: bool) -> Result<()> {
    let parsed: http::Uri = url.parse().with_context(|| {
        format!("`url` `{url}` is not a URL (e.g. ldaps://dc1.corp.example:636)")
    })?;
    if parsed.host().is_none() {
        bail!("`url` `{url}` has no host name");
    }
    match (parsed.scheme_str(), starttls) {
        (Some("ldaps"), false) => Ok(()),
        (Some("ldaps"), true) => bail!(
            "`url` `{url}` is already LDAPS: drop `starttls = true` (StartTLS is for ldap://...:389)"
        ),
        (Some("ldap"), true) => Ok(()),
        (Some("ldap"), false) => bail!(
            "`url` `{url}` is plain LDAP: dphost refuses to send the bind password unencrypted. Use ldaps://HOST:636, or keep ldap://HOST:389 and set `starttls = true`"
        ),
        _ => bail!("`url` `{url}` must start with ldaps:// (or ldap:// with starttls = true)"),
    }
}

fn anchor(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `[connector.response.disable_user]`, as validated by the host. The host
/// checks what it acts on (the AD target, the duration); the component
/// checks the alert types it knows.
#[derive(Debug, Clone, PartialEq)]
pub struct DisableUserPolicy {
    pub enabled: bool,
    pub ad: Option<String>,
    pub on: Vec<String>,
    /// None: disabled until someone re-enables the account.
    pub duration_ms: Option<i64>,
    pub dry_run: bool,
}

pub const DEFAULT_TRIGGERS: [&str; 2] = ["clickDelivered", "messageDelivered"];

/// The keys of `[connector.response.disable_user]`.
const POLICY_KEYS: [&str; 5] = ["enabled", "ad", "on", "duration", "dry_run"];

#[derive(Deserialize)]
struct RawPolicy {
    #[serde(default)]
    enabled: bool,
    ad: Option<String>,
    on: Option<Vec<String>>,
    duration: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

impl DisableUserPolicy {
    /// Parses the connector's `response` table (None when absent). `at(key)`
    /// gives `"line N: "` for a key of the connector's table (`response`,
    /// `response.disable_user.ad`...), so that each problem names its line.
    pub fn from_toml(
        value: Option<&toml::Value>,
        label: &str,
        at: &dyn Fn(&str) -> String,
        problems: &mut Vec<String>,
    ) -> Option<DisableUserPolicy> {
        let value = value?;
        let Some(table) = value.as_table() else {
            problems.push(format!(
                "{}{label}: `response` must be a table: [connector.response.disable_user]",
                at("response")
            ));
            return None;
        };
        let mut policy = None;
        for (key, v) in table {
            if key != "disable_user" {
                problems.push(format!(
                    "{}{label}: unknown response action `response.{key}`: the only one is [connector.response.disable_user]",
                    at(&format!("response.{key}"))
                ));
                continue;
            }
            let here = |k: &str| at(&format!("response.disable_user.{k}"));
            // Unknown keys are named at their own line (serde would only
            // say which, not where).
            let mut v = v.clone();
            if let Some(t) = v.as_table_mut() {
                let unknown: Vec<String> = t
                    .keys()
                    .filter(|k| !POLICY_KEYS.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for k in unknown {
                    problems.push(format!(
                        "{}{label}: unknown key `response.disable_user.{k}` (keys: {})",
                        here(&k),
                        POLICY_KEYS.join(", ")
                    ));
                    t.remove(&k);
                }
            }
            let raw: RawPolicy = match v.try_into() {
                Ok(r) => r,
                Err(e) => {
                    let e: toml::de::Error = e;
                    problems.push(format!(
                        "{}{label}: [connector.response.disable_user]: {} (keys: {})",
                        at("response.disable_user"),
                        e.message(),
                        POLICY_KEYS.join(", ")
                    ));
                    continue;
                }
            };
            let duration_ms = match raw.duration.as_deref().map(str::trim) {
                None | Some("forever") => None,
                Some(text) => match parse_duration_ms(text) {
                    Some(ms) => Some(ms),
                    None => {
                        problems.push(format!(
                            "{}{label}: response.disable_user.duration `{text}` is not \"forever\" nor a duration such as \"30m\", \"4h\" or \"2d\"",
                            here("duration")
                        ));
                        None
                    }
                },
            };
            let on = raw
                .on
                .unwrap_or_else(|| DEFAULT_TRIGGERS.iter().map(|s| s.to_string()).collect());
            if raw.enabled && on.is_empty() {
                problems.push(format!(
                    "{}{label}: response.disable_user.on is empty: name the alert types that trigger it, e.g. [\"clickDelivered\", \"messageDelivered\"]",
                    here("on")
                ));
            }
            if raw.enabled && raw.ad.is_none() {
                problems.push(format!(
                    "{}{label}: response.disable_user is enabled but names no AD target: set `ad` to the name of an [[ad]] table",
                    here("enabled")
                ));
            }
            policy = Some(DisableUserPolicy {
                enabled: raw.enabled,
                ad: raw.ad,
                on,
                duration_ms,
                dry_run: raw.dry_run,
            });
        }
        policy
    }

    /// What the component receives under `response`.
    pub fn to_component_json(&self) -> serde_json::Value {
        serde_json::json!({
            "disable_user": {
                "enabled": self.enabled,
                "ad": self.ad,
                "on": self.on,
                "duration_ms": self.duration_ms,
                "dry_run": self.dry_run,
            }
        })
    }
}

/// `30s`, `30m`, `4h`, `2d` as milliseconds (at most 365 days).
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let ms = n.checked_mul(unit_ms)?;
    (n > 0 && ms <= 365 * 86_400_000).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ldap_needs_starttls() {
        assert!(check_url("ldaps://dc1:636", false).is_ok());
        assert!(check_url("ldap://dc1:389", true).is_ok());
        let err = format!("{:#}", check_url("ldap://dc1:389", false).unwrap_err());
        assert!(
            err.contains("refuses to send the bind password unencrypted"),
            "{err}"
        );
        assert!(check_url("http://dc1", false).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("4h"), Some(4 * 3_600_000));
        assert_eq!(parse_duration_ms("30m"), Some(1_800_000));
        assert_eq!(parse_duration_ms("0h"), None);
        assert_eq!(parse_duration_ms("4 hours"), None);
        assert_eq!(parse_duration_ms("400d"), None);
    }
}

#[cfg(test)]
mod config_file_tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(dir: &Path, ad: &str, policy: &str) -> anyhow::Result<Config> {
        let text = format!(
            r#"
[[ad]]
name = "corp"
url = "ldaps://dc1.corp.example:636"
bind_dn = "svc@corp.example"
base_dn = "DC=corp,DC=example"
ca_file = "ca.pem"
{ad}

[[connector]]
name = "c"
tenant = "t"
component = "proofpoint_tap"
host_url = "https://tap-api-v2.proofpoint.com"
[connector.response.disable_user]
{policy}
"#
        );
        Config::parse(&text, &dir.join("dphost.toml"))
    }

    #[test]
    fn a_good_policy_reaches_the_component_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let cfg = parse(
            dir.path(),
            "password_env = \"AD_PW\"\nprotected = [\"ceo@corp.example\"]",
            "enabled = true\nad = \"corp\"\nduration = \"4h\"",
        )
        .unwrap();
        assert_eq!(cfg.ad[0].protected, vec!["ceo@corp.example"]);
        let json: serde_json::Value =
            serde_json::from_str(&cfg.connectors[0].component_config_json()).unwrap();
        assert_eq!(
            json["response"]["disable_user"],
            serde_json::json!({
                "enabled": true, "ad": "corp", "on": ["clickDelivered", "messageDelivered"],
                "duration_ms": 14_400_000, "dry_run": false
            })
        );
        assert!(!json.to_string().contains("AD_PW"));
    }

    #[test]
    fn bad_policies_and_targets_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            parse(
                dir.path(),
                "password_env = \"A\"\npassword_file = \"f\"",
                "enabled = true\nad = \"other\"",
            )
            .unwrap_err()
        );
        for needle in [
            "exactly one of `password_env`",
            "`ca_file`",
            "does not exist",
            "names no [[ad]] table (configured: corp)",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = format!(
            "{:#}",
            parse(
                dir.path(),
                "password_env = \"A\"",
                "enabled = true\nad = \"corp\"\nduration = \"soon\""
            )
            .unwrap_err()
        );
        assert!(err.contains("duration `soon`"), "{err}");
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let err = format!(
            "{:#}",
            parse(
                dir.path(),
                "password_env = \"A\"\nstarttls = true",
                "enabled = true\nad = \"corp\"\nbogus = 1"
            )
            .unwrap_err()
        );
        assert!(err.contains("already LDAPS"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn policy_problems_name_the_file_and_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let err = format!(
            "{:#}",
            parse(
                dir.path(),
                "password_env = \"A\"",
                "enabled = true\nbogus = 1\nduration = \"soon\"\n[connector.response.quarantine]\nx = 1"
            )
            .unwrap_err()
        );
        // The policy's first key is line 16 of `parse`'s text.
        for want in [
            "dphost.toml has",
            "line 16: connector `c`: response.disable_user is enabled but names no AD target",
            "line 17: connector `c`: unknown key `response.disable_user.bogus`",
            "line 18: connector `c`: response.disable_user.duration `soon`",
            "line 19: connector `c`: unknown response action `response.quarantine`",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
