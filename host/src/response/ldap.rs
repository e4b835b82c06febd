//! The Active Directory client of the response actions, on `ldap3` over
//! LDAPS or StartTLS only, with the server's certificate verified against the
//! target's CA file.
//!
//! What it does is what disabling an account safely takes (see
//! `shared/design/ACTIVE-DIRECTORY.md`): find accounts by `mail`,
//! `userPrincipalName` or `proxyAddresses` with an escaped filter, read an
//! account's `userAccountControl` and the groups it belongs to (nested ones
//! included, through `tokenGroups`), and write back `old | 0x2` or
//! `old & !0x2`, never a constant.

use super::config::AdTarget;
use ldap3::{
    ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Mod, Scope, SearchEntry,
};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// `userAccountControl` ACCOUNTDISABLE.
pub const ACCOUNTDISABLE: i64 = 0x2;
/// `userAccountControl` bits of computer (trust) accounts.
const TRUST_ACCOUNT_BITS: i64 = 0x1000 | 0x2000 | 0x800;

/// Why an LDAP exchange failed, sorted by what the worker does about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdError {
    /// The DC could not be reached or the session could not be set up
    /// (network, TLS, bind): try again later, with backoff.
    #[error("{0}")]
    Connection(String),
    /// The DC answered this operation with an error.
    #[error("{0}")]
    Operation(String),
    /// A guardrail could not be checked (the bind account or a protected
    /// entry not found, an account's SID or groups unreadable): nothing is
    /// disabled blindly; retried later, like a connection problem, since it
    /// takes the operator (or the directory) to change something.
    #[error("{0}")]
    Guard(String),
}

impl AdError {
    /// The session is unusable (drop it).
    pub fn is_connection(&self) -> bool {
        matches!(self, AdError::Connection(_))
    }

    /// Retried with backoff for as long as it takes, never given up.
    pub fn retries_forever(&self) -> bool {
        matches!(self, AdError::Connection(_) | AdError::Guard(_))
    }
}

/// The sentence for a TLS failure.
fn tls_failed(doing: &str, why: &dyn std::fmt::Display) -> AdError {
    AdError::Connection(format!(
        "{doing}: TLS failed ({why}): check that `ca_file` holds the CA that issued the domain controller's certificate and that the URL's host name is in the certificate"
    ))
}

/// An operator sentence for an LDAP result code (and AD's `data` sub-code).
pub fn explain_result(rc: u32, text: &str) -> String {
    let text = text.trim_end_matches('\0').trim();
    let why = match rc {
        8 => "the domain controller requires an encrypted connection or a stronger authentication (result 8, strongAuthRequired): use ldaps://HOST:636, or ldap://HOST:389 with starttls = true".to_string(),
        32 => "the object does not exist (result 32, noSuchObject): check `base_dn` in [[ad]], or the account was moved or deleted meanwhile".to_string(),
        49 => explain_bind_failure(text),
        50 => "the bind account lacks the right to change this account (result 50, insufficientAccessRights): delegate \"Write userAccountControl\" (Read/Write Account Restrictions) on the users' OU to the bind account".to_string(),
        51..=53 => format!("the domain controller is busy or unwilling (result {rc}); dphost tries again later"),
        other => format!("the domain controller answered with LDAP result {other}"),
    };
    if text.is_empty() {
        why
    } else {
        format!("{why} [server said: {text}]")
    }
}

/// AD puts why a bind failed in a `data XXX` sub-code of result 49.
fn explain_bind_failure(text: &str) -> String {
    let data = text
        .split("data ")
        .nth(1)
        .map(|rest| {
            rest.split([',', ' '])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let why = match data.as_str() {
        "52e" => "the bind password is wrong (data 52e): fix `password_env`/`password_file` of the [[ad]] target",
        "525" => "the bind account does not exist (data 525): check `bind_dn`",
        "530" => "the bind account may not log on at this time (data 530): check its logon hours",
        "531" => "the bind account may not log on from this workstation (data 531)",
        "532" => "the bind account's password has expired (data 532): set a new one and update the secret",
        "533" => "the bind account is disabled (data 533): re-enable it in Active Directory",
        "701" => "the bind account has expired (data 701): extend its expiry in Active Directory",
        "773" => "the bind account must change its password (data 773): set a new one and update the secret",
        "775" => "the bind account is locked out (data 775): unlock it in Active Directory, then check the password",
        _ => "the bind credentials were rejected",
    };
    format!("bind failed: {why} (result 49, invalidCredentials)")
}

fn classify(e: LdapError, doing: &str) -> AdError {
    match e {
        LdapError::LdapResult { result } => {
            let sentence = explain_result(result.rc, &result.text);
            if matches!(result.rc, 8 | 49 | 51..=53) {
                AdError::Connection(format!("{doing}: {sentence}"))
            } else {
                AdError::Operation(format!("{doing}: {sentence}"))
            }
        }
        LdapError::Rustls { source } => tls_failed(doing, &source),
        // tokio-rustls reports a failed handshake (LDAPS and StartTLS alike)
        // as an I/O error around the rustls error.
        LdapError::Io { source }
            if source
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some()) =>
        {
            tls_failed(doing, source.get_ref().expect("checked"))
        }
        LdapError::Timeout { .. } => AdError::Connection(format!(
            "{doing}: the domain controller did not answer in time (timeout_secs)"
        )),
        other => AdError::Connection(format!("{doing}: {other}")),
    }
}

/// An account as the guardrails and the disable need it.
#[derive(Debug, Clone)]
pub struct Account {
    pub dn: String,
    pub sam_account_name: String,
    pub user_account_control: i64,
    /// The account's own SID.
    pub sid: Option<Sid>,
    pub object_classes: Vec<String>,
    /// Every group the account belongs to, nested and primary included.
    pub token_groups: Vec<Sid>,
}

impl Account {
    pub fn is_computer(&self) -> bool {
        self.object_classes
            .iter()
            .any(|c| c.eq_ignore_ascii_case("computer"))
            || self.user_account_control & TRUST_ACCOUNT_BITS != 0
    }
}

/// A security identifier, in its binary form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub Vec<u8>);

impl Sid {
    /// The last sub-authority (the RID for domain SIDs).
    pub fn rid(&self) -> Option<u32> {
        let n = *self.0.get(1)? as usize;
        if n == 0 || self.0.len() < 8 + 4 * n {
            return None;
        }
        let at = 8 + 4 * (n - 1);
        Some(u32::from_le_bytes(self.0[at..at + 4].try_into().ok()?))
    }

    /// `S-1-5-21-...` text form.
    pub fn to_text(&self) -> String {
        let b = &self.0;
        if b.len() < 8 {
            return format!("invalid SID {}", hex::encode(b));
        }
        let mut authority = 0u64;
        for &x in &b[2..8] {
            authority = (authority << 8) | u64::from(x);
        }
        let mut s = format!("S-{}-{authority}", b[0]);
        let n = b[1] as usize;
        for i in 0..n {
            let at = 8 + 4 * i;
            if let Some(chunk) = b.get(at..at + 4) {
                s.push_str(&format!(
                    "-{}",
                    u32::from_le_bytes(chunk.try_into().unwrap())
                ));
            }
        }
        s
    }

    fn is_domain(&self) -> bool {
        self.to_text().starts_with("S-1-5-21-")
    }
}

/// Whether an account may be disabled.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allowed,
    /// Never disabled: why.
    Protected(String),
    /// What the guardrails need could not be read: not disabled now, tried
    /// again later.
    Unverifiable(String),
}

/// The guardrails' decision for `account`. A reason to protect it wins;
/// otherwise an account whose SID or groups could not be read is not
/// disabled: every account has its own SID and at least its primary group
/// (Domain Users) in `tokenGroups`, so an empty one means the bind account
/// may not read it, and an administrator would pass unnoticed.
pub fn verdict(account: &Account, guard: &Guard) -> Verdict {
    if let Some(why) = protection(account, guard) {
        return Verdict::Protected(why);
    }
    let missing = match (&account.sid, account.token_groups.is_empty()) {
        (None, true) => "its objectSid and its group memberships (tokenGroups)",
        (None, false) => "its objectSid",
        (Some(_), true) => "its group memberships (tokenGroups)",
        (Some(_), false) => return Verdict::Allowed,
    };
    Verdict::Unverifiable(format!(
        "{} was not disabled: {missing} could not be read, so dphost cannot tell whether it is an administrator or the built-in Administrator; let the bind account read objectSid and tokenGroups of users (in AD: add it to \"Windows Authorization Access Group\"); dphost tries again later",
        account.dn
    ))
}

/// Why an account may not be disabled, if it may not (from what could be
/// read; `verdict` also refuses what could not).
fn protection(account: &Account, guard: &Guard) -> Option<String> {
    if guard.bind_dns.contains(&account.dn.to_ascii_lowercase()) {
        return Some("it is the bind account dphost uses".into());
    }
    if let Some(sid) = &account.sid {
        if sid.is_domain() && sid.rid() == Some(500) {
            return Some("it is the built-in Administrator (RID 500)".into());
        }
        if sid.is_domain() && sid.rid() == Some(502) {
            return Some("it is krbtgt (RID 502)".into());
        }
    }
    if account.sam_account_name.eq_ignore_ascii_case("krbtgt") {
        return Some("it is krbtgt".into());
    }
    if account.is_computer() {
        return Some("it is a computer account".into());
    }
    for g in &account.token_groups {
        let text = g.to_text();
        if text == "S-1-5-32-544" {
            return Some("it is a member of Administrators (S-1-5-32-544)".into());
        }
        if g.is_domain() {
            match g.rid() {
                Some(512) => return Some("it is a member of Domain Admins".into()),
                Some(518) => return Some("it is a member of Schema Admins".into()),
                Some(519) => return Some("it is a member of Enterprise Admins".into()),
                _ => {}
            }
        }
    }
    if let Some(entry) = guard
        .protected_accounts
        .get(&account.dn.to_ascii_lowercase())
    {
        return Some(format!("it is on the protected list (`{entry}`)"));
    }
    for (sid, entry) in &guard.protected_groups {
        if account.token_groups.contains(sid) {
            return Some(format!("it is a member of the protected group `{entry}`"));
        }
    }
    None
}

/// What the guardrails compare accounts with, resolved once per session.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// The bind account's DN(s), lower case.
    pub bind_dns: HashSet<String>,
    /// Protected accounts: lower-case DN -> the configured entry.
    pub protected_accounts: std::collections::HashMap<String, String>,
    /// Protected groups: SID -> the configured entry.
    pub protected_groups: Vec<(Sid, String)>,
}

/// One bound session with a domain controller.
pub struct AdSession {
    ldap: Ldap,
    base_dn: String,
    timeout: Duration,
    pub guard: Guard,
}

/// The TLS client configuration that trusts only the target's CA file.
fn tls_config(target: &AdTarget) -> Result<Arc<rustls::ClientConfig>, AdError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |why: String| AdError::Connection(format!("[[ad]] `{}`: {why}", target.name));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&target.ca_file).map_err(|e| {
        bad(format!(
            "cannot read `ca_file` {}: {e}",
            target.ca_file.display()
        ))
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            bad(format!(
                "`ca_file` {} is not a PEM certificate file: {e}",
                target.ca_file.display()
            ))
        })?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("`ca_file` {}: {e}", target.ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!(
            "`ca_file` {} holds no certificate",
            target.ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl AdSession {
    /// Connects (LDAPS or StartTLS), verifies the certificate, binds, and
    /// resolves the guardrails' accounts and groups.
    pub async fn connect(target: &AdTarget) -> Result<AdSession, AdError> {
        // Checked at configuration time too; the client refuses on its own.
        super::config::check_url(&target.url, target.starttls)
            .map_err(|e| AdError::Connection(format!("[[ad]] `{}`: {e:#}", target.name)))?;
        let password = target
            .password()
            .map_err(|e| AdError::Connection(format!("{e:#}")))?;
        let timeout = Duration::from_secs(target.timeout_secs);
        let settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(target.starttls)
            .set_config(tls_config(target)?);
        let doing = format!("connecting to {} ([[ad]] `{}`)", target.url, target.name);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &target.url)
            .await
            .map_err(|e| classify(e, &doing))?;
        ldap3::drive!(conn);
        let doing = format!("binding to {} as {}", target.url, target.bind_dn);
        ldap.with_timeout(timeout)
            .simple_bind(&target.bind_dn, &password)
            .await
            .map_err(|e| classify(e, &doing))?
            .success()
            .map_err(|e| classify(e, &doing))?;
        let mut session = AdSession {
            ldap,
            base_dn: target.base_dn.clone(),
            timeout,
            guard: Guard::default(),
        };
        session.resolve_guard(target).await?;
        Ok(session)
    }

    async fn resolve_guard(&mut self, target: &AdTarget) -> Result<(), AdError> {
        let bind = target.bind_dn.trim();
        let found = if bind.contains('=') {
            // A DN: read it where it is (it may lie outside `base_dn`).
            match self.read_entry(bind, &["objectSid"]).await? {
                Some(e) => vec![e.dn],
                None => Vec::new(),
            }
        } else {
            let filter = if let Some((user, _)) = bind.split_once('@') {
                format!(
                    "(|(userPrincipalName={})(sAMAccountName={}))",
                    ldap_escape(bind),
                    ldap_escape(user)
                )
            } else {
                let name = bind.rsplit('\\').next().unwrap_or(bind);
                format!("(sAMAccountName={})", ldap_escape(name))
            };
            self.search_subtree(&filter, &["objectSid"])
                .await?
                .into_iter()
                .map(|e| e.dn)
                .collect()
        };
        self.guard.bind_dns = bind_account_dns(target, &self.base_dn, found)?;
        for entry in &target.protected {
            let e = ldap_escape(entry.trim());
            let filter = format!(
                "(&(|(objectClass=user)(objectClass=group))(|(distinguishedName={e})(mail={e})(userPrincipalName={e})(proxyAddresses=smtp:{e})(sAMAccountName={e})(cn={e})))"
            );
            let found = self
                .search_subtree(&filter, &["objectClass", "objectSid"])
                .await?;
            if found.is_empty() {
                // A guardrail that names nothing protects nothing: refuse to
                // act rather than risk disabling whom it meant.
                return Err(AdError::Guard(format!(
                    "[[ad]] `{}`: the protected entry `{entry}` matches no account or group in {}: fix `protected` (an account's mail, UPN, sAMAccountName or DN, or a group's name or DN); no account is disabled until it resolves",
                    target.name, self.base_dn
                )));
            }
            for f in found {
                let is_group = values(&f, "objectClass")
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case("group"));
                if is_group {
                    // Members are recognised by the group's SID: without
                    // it the group would protect nobody.
                    let Some(sid) = bin_values(&f, "objectSid").into_iter().next() else {
                        return Err(AdError::Guard(format!(
                            "[[ad]] `{}`: the objectSid of the protected group {} could not be read, so its members cannot be recognised: let the bind account read it; no account is disabled until then",
                            target.name, f.dn
                        )));
                    };
                    self.guard.protected_groups.push((Sid(sid), entry.clone()));
                } else {
                    self.guard
                        .protected_accounts
                        .insert(f.dn.to_ascii_lowercase(), entry.clone());
                }
            }
        }
        Ok(())
    }

    /// One entry by its DN (None if it does not exist).
    async fn read_entry(
        &mut self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, AdError> {
        let doing = format!("reading {dn}");
        let result = self
            .ldap
            .with_timeout(self.timeout)
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .map_err(|e| classify(e, &doing))?;
        if result.1.rc == 32 {
            return Ok(None);
        }
        let (entries, _) = result.success().map_err(|e| classify(e, &doing))?;
        Ok(entries
            .into_iter()
            .find(|e| !e.is_ref())
            .map(SearchEntry::construct))
    }

    async fn search_subtree(
        &mut self,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, AdError> {
        let doing = format!("searching {} for {filter}", self.base_dn);
        let (entries, _) = self
            .ldap
            .with_timeout(self.timeout)
            .search(&self.base_dn, Scope::Subtree, filter, attrs.to_vec())
            .await
            .map_err(|e| classify(e, &doing))?
            .success()
            .map_err(|e| classify(e, &doing))?;
        // Searches from the domain root also return referrals to the other
        // partitions (Configuration, DNS): they are not accounts.
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_ref())
            .map(SearchEntry::construct)
            .collect())
    }

    /// The DNs of the user accounts whose `mail`, `userPrincipalName` or
    /// `proxyAddresses` is `address`, deduplicated, in a stable order.
    pub async fn find_accounts(&mut self, address: &str) -> Result<Vec<String>, AdError> {
        let a = ldap_escape(address);
        let filter = format!(
            "(&(objectCategory=person)(objectClass=user)(|(mail={a})(userPrincipalName={a})(proxyAddresses=smtp:{a})))"
        );
        let found = self.search_subtree(&filter, &["distinguishedName"]).await?;
        let dns: BTreeSet<String> = found.into_iter().map(|e| e.dn).collect();
        Ok(dns.into_iter().collect())
    }

    /// Reads an account (None if it no longer exists).
    pub async fn read_account(&mut self, dn: &str) -> Result<Option<Account>, AdError> {
        let doing = format!("reading {dn}");
        let Some(entry) = self
            .read_entry(
                dn,
                &[
                    "userAccountControl",
                    "objectSid",
                    "sAMAccountName",
                    "objectClass",
                    "tokenGroups",
                ],
            )
            .await?
        else {
            return Ok(None);
        };
        let uac = values(&entry, "userAccountControl")
            .first()
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| {
                AdError::Operation(format!(
                    "{doing}: it has no readable userAccountControl: check that the bind account may read it"
                ))
            })?;
        Ok(Some(Account {
            dn: entry.dn.clone(),
            sam_account_name: values(&entry, "sAMAccountName")
                .first()
                .cloned()
                .unwrap_or_default(),
            user_account_control: uac,
            sid: bin_values(&entry, "objectSid").into_iter().next().map(Sid),
            object_classes: values(&entry, "objectClass"),
            token_groups: bin_values(&entry, "tokenGroups")
                .into_iter()
                .map(Sid)
                .collect(),
        }))
    }

    /// Replaces `userAccountControl` of `dn` with `value`.
    pub async fn write_uac(&mut self, dn: &str, value: i64) -> Result<(), AdError> {
        let doing = format!("writing userAccountControl={value} on {dn}");
        let v = value.to_string();
        self.ldap
            .with_timeout(self.timeout)
            .modify(
                dn,
                vec![Mod::Replace(
                    "userAccountControl",
                    HashSet::from([v.as_str()]),
                )],
            )
            .await
            .map_err(|e| classify(e, &doing))?
            .success()
            .map_err(|e| classify(e, &doing))?;
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.ldap.unbind().await;
    }
}

/// The bind account's DNs (lower case) from what resolving `bind_dn` found.
/// Finding none is refused: the guardrail "never the bind account" would
/// protect nothing, and disabling it locks dphost out.
fn bind_account_dns(
    target: &AdTarget,
    base_dn: &str,
    found: Vec<String>,
) -> Result<HashSet<String>, AdError> {
    if found.is_empty() {
        return Err(AdError::Guard(format!(
            "[[ad]] `{}`: bind_dn `{}` resolves to no account under {base_dn}, so dphost cannot recognise (and spare) its own account: give the bind account's DN, or a userPrincipalName or sAMAccountName found under `base_dn`; no account is disabled until it resolves",
            target.name, target.bind_dn
        )));
    }
    Ok(found.into_iter().map(|d| d.to_ascii_lowercase()).collect())
}

fn values(entry: &SearchEntry, name: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Binary values: ldap3 files a value that happens to be valid UTF-8 among
/// the text attributes, so look in both.
fn bin_values(entry: &SearchEntry, name: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = entry
        .bin_attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.clone())
        .collect();
    out.extend(
        entry
            .attrs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.iter().map(|s| s.as_bytes().to_vec())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(text_rids: &[u32]) -> Sid {
        let mut b = vec![1u8, text_rids.len() as u8, 0, 0, 0, 0, 0, 5];
        for r in text_rids {
            b.extend_from_slice(&r.to_le_bytes());
        }
        Sid(b)
    }

    fn account(groups: Vec<Sid>) -> Account {
        Account {
            dn: "CN=Bob,CN=Users,DC=corp,DC=test".into(),
            sam_account_name: "bob".into(),
            user_account_control: 512,
            sid: Some(sid(&[21, 1, 2, 3, 1105])),
            object_classes: vec!["top".into(), "person".into(), "user".into()],
            token_groups: groups,
        }
    }

    #[test]
    fn sid_text_and_rid() {
        let s = sid(&[21, 1, 2, 3, 512]);
        assert_eq!(s.to_text(), "S-1-5-21-1-2-3-512");
        assert_eq!(s.rid(), Some(512));
        assert_eq!(sid(&[32, 544]).to_text(), "S-1-5-32-544");
    }

    #[test]
    fn guardrails() {
        let g = Guard::default();
        assert_eq!(
            protection(&account(vec![sid(&[21, 1, 2, 3, 513])]), &g),
            None
        );
        for (rid, what) in [
            (512, "Domain Admins"),
            (518, "Schema Admins"),
            (519, "Enterprise Admins"),
        ] {
            let why = protection(&account(vec![sid(&[21, 1, 2, 3, rid])]), &g).unwrap();
            assert!(why.contains(what), "{why}");
        }
        assert!(protection(&account(vec![sid(&[32, 544])]), &g)
            .unwrap()
            .contains("Administrators"));
        let mut admin = account(vec![]);
        admin.sid = Some(sid(&[21, 1, 2, 3, 500]));
        assert!(protection(&admin, &g).unwrap().contains("RID 500"));
        let mut computer = account(vec![]);
        computer.user_account_control = 4096;
        assert!(protection(&computer, &g).unwrap().contains("computer"));
        let mut krbtgt = account(vec![]);
        krbtgt.sam_account_name = "krbtgt".into();
        assert!(protection(&krbtgt, &g).unwrap().contains("krbtgt"));
        let mut g2 = Guard::default();
        g2.bind_dns.insert("cn=bob,cn=users,dc=corp,dc=test".into());
        assert!(protection(&account(vec![]), &g2)
            .unwrap()
            .contains("bind account"));
        let mut g3 = Guard::default();
        g3.protected_groups
            .push((sid(&[21, 1, 2, 3, 1200]), "VIPs".into()));
        assert!(protection(&account(vec![sid(&[21, 1, 2, 3, 1200])]), &g3)
            .unwrap()
            .contains("VIPs"));
    }

    #[test]
    fn unreadable_sids_and_groups_are_refused_not_passed() {
        let g = Guard::default();
        let domain_users = sid(&[21, 1, 2, 3, 513]);
        assert_eq!(
            verdict(&account(vec![domain_users.clone()]), &g),
            Verdict::Allowed
        );
        // No groups readable: an admin would look like anyone else.
        let Verdict::Unverifiable(why) = verdict(&account(vec![]), &g) else {
            panic!("empty tokenGroups passed");
        };
        assert!(why.contains("tokenGroups"), "{why}");
        assert!(why.contains("tries again later"), "{why}");
        let mut no_sid = account(vec![domain_users]);
        no_sid.sid = None;
        let Verdict::Unverifiable(why) = verdict(&no_sid, &g) else {
            panic!("a missing objectSid passed");
        };
        assert!(why.contains("objectSid"), "{why}");
        // A reason to protect wins over what could not be read.
        let mut computer = account(vec![]);
        computer.user_account_control = 4096;
        assert!(matches!(verdict(&computer, &g), Verdict::Protected(_)));
    }

    #[test]
    fn a_bind_dn_that_resolves_to_nothing_is_refused() {
        let target = AdTarget {
            name: "corp".into(),
            url: "ldaps://dc1:636".into(),
            starttls: false,
            bind_dn: "svc@corp.test".into(),
            password: crate::config::SecretSource::Env("X".into()),
            base_dn: "OU=Staff,DC=corp,DC=test".into(),
            ca_file: "ca.pem".into(),
            protected: vec![],
            timeout_secs: 30,
        };
        let err = bind_account_dns(&target, &target.base_dn, vec![]).unwrap_err();
        assert!(err.retries_forever() && !err.is_connection(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("resolves to no account under OU=Staff"),
            "{msg}"
        );
        assert!(
            msg.contains("no account is disabled until it resolves"),
            "{msg}"
        );
        let dns = bind_account_dns(
            &target,
            &target.base_dn,
            vec!["CN=svc,CN=Users,DC=corp,DC=test".into()],
        )
        .unwrap();
        assert!(dns.contains("cn=svc,cn=users,dc=corp,dc=test"));
    }

    #[test]
    fn bind_failures_are_explained_by_their_data_code() {
        let t = "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data 52e, v3839";
        assert!(explain_result(49, t).contains("password is wrong (data 52e)"));
        assert!(explain_result(49, "... data 533, v893").contains("disabled (data 533)"));
        assert!(explain_result(49, "... data 775, v893").contains("locked out"));
        assert!(
            explain_result(8, "BindSimple: Transport encryption required.").contains("encrypted")
        );
        assert!(explain_result(50, "00002098: ...").contains("Write userAccountControl"));
        assert!(explain_result(32, "00002030: No such Base DN").contains("does not exist"));
    }
}
