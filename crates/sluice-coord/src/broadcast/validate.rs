//! What a broadcast request must satisfy before anything is written.

use super::*;

/// A request (or a stored task) that passed [`check`].
pub(super) struct Checked {
    pub(super) template: Message,
    /// The template in the on-log record codec, as persisted.
    pub(super) encoded: Vec<u8>,
    pub(super) vchannels: Vec<VChannel>,
    pub(super) resource_keys: Vec<ResourceKey>,
}

/// Reserved properties a template may carry; every other `_` key is the broadcaster's or the WAL's.
pub(super) const TEMPLATE_RESERVED: [&str; 4] = [
    prop::VERSION,
    prop::TYPE,
    prop::HEADER,
    prop::BARRIER_TIMESTAMP,
];

/// Resource key domains: collection name, database name, privilege, cluster.
pub(super) const DOMAINS: std::ops::RangeInclusive<i32> = 1..=4;

pub(super) fn check(
    template: &Message,
    vchannels: &[String],
    resource_keys: &[ResourceKey],
) -> Result<Checked, String> {
    let ty = template.message_type().map_err(|e| e.to_string())?;
    if ty.is_system() || ty.is_self_controlled() {
        return Err(format!("a {ty} message cannot be broadcast"));
    }
    for key in template.properties().keys() {
        if key.is_empty() || (key.starts_with('_') && !TEMPLATE_RESERVED.contains(&key.as_str())) {
            return Err(format!(
                "property key {:?} is empty or reserved",
                key.chars().take(64).collect::<String>()
            ));
        }
    }
    template.version().map_err(|e| e.to_string())?;
    template.barrier_timestamp().map_err(|e| e.to_string())?;
    // The typed header must decode as the header of the message's type.
    let header = template.any_header().map_err(|e| e.to_string())?;
    // A schema it carries keeps every schema rule: a copy the WAL would refuse is never sent.
    let schema = match &header {
        msg::Header::CreateCollection(h) => h.schema.as_ref(),
        msg::Header::SchemaChange(h) => h.schema.as_ref(),
        _ => None,
    };
    if let Some(s) = schema {
        sluice_types::schema::validate(s).map_err(|e| e.to_string())?;
    }
    let encoded = codec::encode_message_to_vec(template).map_err(|e| e.to_string())?;

    if vchannels.is_empty() {
        return Err("a broadcast needs at least one vchannel".into());
    }
    let mut parsed = Vec::with_capacity(vchannels.len());
    let mut seen = HashSet::new();
    for name in vchannels {
        let vc = VChannel::new(name).map_err(|e| e.to_string())?;
        if !seen.insert(vc.clone()) {
            return Err(format!("vchannel {vc} is named twice"));
        }
        parsed.push(vc);
    }

    let mut names = HashSet::new();
    for key in resource_keys {
        if !DOMAINS.contains(&key.domain) {
            return Err(format!(
                "resource key domain {} is unknown (want 1-4)",
                key.domain
            ));
        }
        if !names.insert((key.domain, key.key.as_str())) {
            return Err(format!("resource key {} is named twice", LockName::of(key)));
        }
    }
    Ok(Checked {
        template: template.clone(),
        encoded,
        vchannels: parsed,
        resource_keys: resource_keys.to_vec(),
    })
}
