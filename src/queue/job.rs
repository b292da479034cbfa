//! `killmail.ingest`: the job every source puts on the queue (DESIGN.md, "Job").

use serde::{Deserialize, Serialize};

use super::runner::Job;
use crate::killmail::{Killmail, KillmailId, Received, Source, Zkb, check_hash};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestJob {
    pub killmail_id: KillmailId,
    pub hash: String,
    /// The ESI body; without it the worker fetches it from ESI by id and hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killmail: Option<Killmail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zkb: Option<Zkb>,
    pub source: Source,
}

impl IngestJob {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes")
    }

    /// The job with its killmail, once it has one.
    pub fn into_received(self, killmail: Killmail) -> Received {
        Received {
            killmail,
            hash: self.hash,
            zkb: self.zkb,
            source: self.source,
        }
    }
}

impl Job for IngestJob {
    const QUEUE: &'static str = "killmail.ingest";

    /// Decodes and checks a job body; the error is the reason it is dead-lettered with.
    fn decode(body: &[u8]) -> Result<Self, String> {
        let job: Self =
            serde_json::from_slice(body).map_err(|e| format!("not a killmail.ingest job: {e}"))?;
        check_hash(&job.hash)?;
        if let Some(killmail) = &job.killmail {
            if killmail.killmail_id != job.killmail_id {
                return Err(format!(
                    "job is for killmail {} but carries killmail {}",
                    job.killmail_id, killmail.killmail_id
                ));
            }
            killmail.validate()?;
        }
        Ok(job)
    }
}
