//! ESI on a pilot's behalf: their recent killmails, and their corporation's when they are a
//! director (their corporation and roles tell), each list paged back only as far as the newest
//! killmail an earlier sync found.

use serde::Deserialize;

use crate::esi::{Esi, EsiError};
use crate::killmail::KillmailId;

/// The role that lets a pilot read their corporation's killmails.
pub const DIRECTOR: &str = "Director";

/// A killmail as ESI lists it: enough to queue it for worker-killmails, which fetches the body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KillmailRef {
    pub killmail_id: KillmailId,
    pub killmail_hash: String,
}

/// Whose killmails are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    Character(i64),
    Corporation(i64),
}

impl Whose {
    fn path(self) -> String {
        match self {
            Whose::Character(id) => format!("/characters/{id}/killmails/recent/"),
            Whose::Corporation(id) => format!("/corporations/{id}/killmails/recent/"),
        }
    }

    fn endpoint(self) -> &'static str {
        match self {
            Whose::Character(_) => "character_killmails",
            Whose::Corporation(_) => "corporation_killmails",
        }
    }
}

impl std::fmt::Display for Whose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Whose::Character(id) => write!(f, "character {id}"),
            Whose::Corporation(id) => write!(f, "corporation {id}"),
        }
    }
}

/// The killmails ESI lists for `whose` that are newer than `newest_known`, newest first: page
/// after page (ESI says how many in `X-Pages`), stopping at the first page that reaches
/// `newest_known`, since ESI lists newest first.
pub async fn recent_killmails(
    esi: &Esi,
    whose: Whose,
    access_token: &str,
    newest_known: Option<KillmailId>,
) -> Result<Vec<KillmailRef>, EsiError> {
    let mut found = Vec::new();
    let mut page: u32 = 1;
    loop {
        let what = format!("reading the recent killmails of {whose} (page {page})");
        let response = esi
            .get(
                whose.endpoint(),
                &what,
                &whose.path(),
                &[("page", page.to_string())],
                Some(access_token),
            )
            .await?;
        let pages: u32 = response
            .headers()
            .get("x-pages")
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .unwrap_or(1);
        let listed: Vec<KillmailRef> = response
            .json()
            .await
            .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}")))?;
        let (reached_known, listed) = newer_than(listed, newest_known);
        found.extend(listed);
        if reached_known || page >= pages {
            return Ok(found);
        }
        page += 1;
    }
}

/// The entries of one page newer than `newest_known`, and whether the page reached it (or an
/// empty page ended the list).
fn newer_than(
    listed: Vec<KillmailRef>,
    newest_known: Option<KillmailId>,
) -> (bool, Vec<KillmailRef>) {
    let Some(known) = newest_known else {
        return (listed.is_empty(), listed);
    };
    let before = listed.len();
    let newer: Vec<KillmailRef> = listed
        .into_iter()
        .filter(|k| k.killmail_id > known)
        .collect();
    (before == 0 || newer.len() < before, newer)
}

#[derive(Deserialize)]
struct Roles {
    #[serde(default)]
    roles: Vec<String>,
}

/// Whether the pilot holds the director role in their corporation
/// (`GET /characters/{id}/roles/`).
pub async fn is_director(
    esi: &Esi,
    character_id: i64,
    access_token: &str,
) -> Result<bool, EsiError> {
    let what = format!("reading the roles of character {character_id}");
    let roles: Roles = esi
        .get(
            "character_roles",
            &what,
            &format!("/characters/{character_id}/roles/"),
            &[],
            Some(access_token),
        )
        .await?
        .json()
        .await
        .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}")))?;
    Ok(roles.roles.iter().any(|role| role == DIRECTOR))
}

/// A character's corporation and alliance, as `GET /characters/{id}/` (public) tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Affiliation {
    pub corporation_id: i64,
    pub alliance_id: Option<i64>,
}

pub async fn affiliation(esi: &Esi, character_id: i64) -> Result<Affiliation, EsiError> {
    let what = format!("reading the corporation of character {character_id}");
    esi.get(
        "character",
        &what,
        &format!("/characters/{character_id}/"),
        &[],
        None,
    )
    .await?
    .json()
    .await
    .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(ids: &[i64]) -> Vec<KillmailRef> {
        ids.iter()
            .map(|&id| KillmailRef {
                killmail_id: KillmailId(id),
                killmail_hash: "0".repeat(40),
            })
            .collect()
    }

    fn ids(refs: &[KillmailRef]) -> Vec<i64> {
        refs.iter().map(|k| k.killmail_id.0).collect()
    }

    #[test]
    fn a_page_is_kept_down_to_the_newest_known_killmail() {
        let (reached, newer) = newer_than(refs(&[9, 8, 7]), None);
        assert_eq!((reached, ids(&newer)), (false, vec![9, 8, 7]), "first sync");
        let (reached, newer) = newer_than(refs(&[9, 8, 7]), Some(KillmailId(8)));
        assert_eq!((reached, ids(&newer)), (true, vec![9]));
        let (reached, newer) = newer_than(refs(&[9, 8]), Some(KillmailId(5)));
        assert_eq!((reached, ids(&newer)), (false, vec![9, 8]), "read on");
        let (reached, newer) = newer_than(refs(&[]), Some(KillmailId(5)));
        assert_eq!(
            (reached, ids(&newer)),
            (true, vec![]),
            "an empty page ends it"
        );
    }
}
