//! zKillboard's websocket at `/websocket/`: a client sends `{"action":"sub","channel":C}` and
//! `{"action":"unsub","channel":C}`; `killstream` gives each killmail as ESI JSON with its `zkb`
//! (as zKillboard did until 2025), every other channel a `littlekill` message with the victim's
//! ids. Subscriptions are indexed by channel: a killmail's own channels (its systems, parties,
//! ships, groups and labels, each once) are looked up, never every subscription checked, and
//! each message is serialized once for all its subscribers. A killmail reaches a channel once;
//! a connection subscribed to several of its channels gets one message per channel, as
//! zKillboard sent them. Mistakes are answered `{"action":"error","error":…}`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::zkb_with_hash;
use crate::events::KillmailAdded;
use crate::filter::Filter;
use crate::live::Hub;
use crate::statics::Statics;
use crate::ws::accept;
use crate::ws::peers::{Peers, peer_ip};
use crate::ws::push::{self, Audience, Gate};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Channels one connection may hold.
    pub max_channels: usize,
    /// Messages queued for one client; one this far behind is cut off (1008).
    pub send_queue: usize,
    /// Connections at once; more are refused with 503.
    pub max_connections: usize,
    /// A client silent this long (no message, no answer to pings) is dropped.
    pub idle: Duration,
    /// A client without a channel this long is closed (1000).
    pub subscribe_within: Duration,
    /// Connections by address, shared with the server's other WebSockets.
    pub peers: Peers,
}

/// A zKillboard channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Killstream,
    All,
    Character(i64),
    Corporation(i64),
    Alliance(i64),
    Faction(i64),
    Ship(i64),
    Group(i64),
    System(i64),
    Constellation(i64),
    Region(i64),
    Label(String),
}

impl Channel {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "killstream" => return Ok(Self::Killstream),
            "all:*" => return Ok(Self::All),
            _ => {}
        }
        let unknown = || {
            format!(
                "unknown channel `{name}`: killstream, all:*, character:ID, corporation:ID, \
                 alliance:ID, faction:ID, ship:ID, group:ID, system:ID, constellation:ID, \
                 region:ID or label:LABEL"
            )
        };
        let (kind, value) = name.split_once(':').ok_or_else(unknown)?;
        if kind == "label" {
            if value.is_empty() || value.len() > 64 {
                return Err("a label is 1 to 64 characters".to_owned());
            }
            return Ok(Self::Label(value.to_owned()));
        }
        let id = || {
            value
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("`{value}` in `{name}` is not an id"))
        };
        Ok(match kind {
            "character" => Self::Character(id()?),
            "corporation" => Self::Corporation(id()?),
            "alliance" => Self::Alliance(id()?),
            "faction" => Self::Faction(id()?),
            "ship" => Self::Ship(id()?),
            "group" => Self::Group(id()?),
            "system" => Self::System(id()?),
            "constellation" => Self::Constellation(id()?),
            "region" => Self::Region(id()?),
            _ => return Err(unknown()),
        })
    }

    /// Every channel `added` reaches, each once.
    pub fn of(added: &KillmailAdded, statics: &Statics) -> HashSet<Self> {
        let killmail = &added.killmail;
        let system = killmail.solar_system_id;
        let mut channels = HashSet::from([Self::Killstream, Self::All, Self::System(system)]);
        channels.extend(statics.constellation_of(system).map(Self::Constellation));
        channels.extend(statics.region_of(system).map(Self::Region));
        let victim = &killmail.victim;
        let parties = std::iter::once((
            victim.character_id,
            victim.corporation_id,
            victim.alliance_id,
            victim.faction_id,
            Some(victim.ship_type_id),
        ))
        .chain(killmail.attackers.iter().map(|a| {
            (
                a.character_id,
                a.corporation_id,
                a.alliance_id,
                a.faction_id,
                a.ship_type_id,
            )
        }));
        for (character, corporation, alliance, faction, ship) in parties {
            channels.extend(character.map(Self::Character));
            channels.extend(corporation.map(Self::Corporation));
            channels.extend(alliance.map(Self::Alliance));
            channels.extend(faction.map(Self::Faction));
            channels.extend(ship.map(Self::Ship));
            channels.extend(ship.and_then(|s| statics.group_of(s)).map(Self::Group));
        }
        let labels = added.zkb.as_ref().and_then(|zkb| zkb.0.get("labels"));
        if let Some(Value::Array(labels)) = labels {
            let labels = labels.iter().filter_map(Value::as_str);
            channels.extend(labels.map(|label| Self::Label(label.to_owned())));
        }
        channels
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Killstream => write!(f, "killstream"),
            Self::All => write!(f, "all:*"),
            Self::Character(id) => write!(f, "character:{id}"),
            Self::Corporation(id) => write!(f, "corporation:{id}"),
            Self::Alliance(id) => write!(f, "alliance:{id}"),
            Self::Faction(id) => write!(f, "faction:{id}"),
            Self::Ship(id) => write!(f, "ship:{id}"),
            Self::Group(id) => write!(f, "group:{id}"),
            Self::System(id) => write!(f, "system:{id}"),
            Self::Constellation(id) => write!(f, "constellation:{id}"),
            Self::Region(id) => write!(f, "region:{id}"),
            Self::Label(label) => write!(f, "label:{label}"),
        }
    }
}

/// zKillboard's websocket side of a server; clone it freely.
#[derive(Clone)]
pub struct Websocket {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    statics: Arc<Statics>,
    audience: Audience,
    /// Subscribed connections by channel.
    index: Mutex<HashMap<Channel, HashSet<u64>>>,
    gate: Gate,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
struct ClientMessage {
    action: String,
    #[serde(default)]
    channel: Option<String>,
}

impl Websocket {
    /// Starts passing on the hub's killmails until `shutdown`.
    pub fn start(
        limits: Limits,
        statics: Arc<Statics>,
        hub: &Hub,
        shutdown: CancellationToken,
    ) -> Self {
        let websocket = Self {
            inner: Arc::new(Inner {
                gate: Gate::new(limits.max_connections).with_peers(limits.peers.clone()),
                limits,
                statics,
                audience: Audience::default(),
                index: Mutex::default(),
                shutdown,
            }),
        };
        let killmails = hub.subscribe(Arc::new(Filter::default()), None);
        let relay = websocket.clone();
        tokio::spawn(async move {
            tokio::pin!(killmails);
            while let Some(Ok(added)) = killmails.next().await {
                relay.dispatch(&added);
            }
        });
        websocket
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<Channel, HashSet<u64>>> {
        // Every change is one insert or one remove: a poisoned index is still consistent.
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `added` to the subscribers of each of its channels, serialized once per channel.
    pub fn dispatch(&self, added: &KillmailAdded) {
        let channels = Channel::of(added, &self.inner.statics);
        let index = self.index();
        for channel in channels {
            let Some(subscribers) = index.get(&channel) else {
                continue;
            };
            let text: Arc<str> = message(added, &channel, &self.inner.statics)
                .to_string()
                .into();
            self.inner
                .audience
                .send_to(subscribers.iter().copied(), &text);
        }
    }

    /// Waits until every connection has said goodbye (see [`Gate::closed`]).
    pub async fn closed(&self) {
        self.inner.gate.closed().await;
    }

    /// Upgrades a request to a zKillboard websocket connection, unless the server is full
    /// (503), its address holds as many as it may (429) or it is no WebSocket handshake (400).
    pub fn upgrade(&self, request: Request) -> Response {
        let permit = match self.inner.gate.enter_from(peer_ip(&request)) {
            Ok(permit) => permit,
            Err(refused) => return refused.into_response(),
        };
        let websocket = self.clone();
        accept(request, push::config(), None, move |socket| async move {
            let listener = websocket
                .inner
                .audience
                .join(websocket.inner.limits.send_queue);
            let session = Session {
                websocket: websocket.clone(),
                id: listener.id,
                channels: HashSet::new(),
            };
            let (idle, shutdown) = (
                websocket.inner.limits.idle,
                websocket.inner.shutdown.clone(),
            );
            push::run(socket, listener, idle, shutdown, session).await;
            drop(permit);
        })
    }
}

/// One connection's channels; it leaves the index when dropped.
struct Session {
    websocket: Websocket,
    id: u64,
    channels: HashSet<Channel>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut index = self.websocket.index();
        for channel in self.channels.drain() {
            unsubscribe(&mut index, &channel, self.id);
        }
    }
}

fn unsubscribe(index: &mut HashMap<Channel, HashSet<u64>>, channel: &Channel, id: u64) {
    if let Some(subscribers) = index.get_mut(channel) {
        subscribers.remove(&id);
        if subscribers.is_empty() {
            index.remove(channel);
        }
    }
}

impl push::Client for Session {
    /// Handles one client message; the answer, if any, is an error.
    fn answer(&mut self, text: &str) -> Option<String> {
        self.handle(text)
            .err()
            .map(|error| json!({ "action": "error", "error": error }).to_string())
    }

    fn subscribe_within(&self) -> Option<Duration> {
        Some(self.websocket.inner.limits.subscribe_within)
    }

    fn subscribed(&self) -> bool {
        !self.channels.is_empty()
    }
}

impl Session {
    fn handle(&mut self, text: &str) -> Result<(), String> {
        let message: ClientMessage = serde_json::from_str(text).map_err(|error| {
            format!(
                "not a message: {error}; send {{\"action\":\"sub\",\"channel\":\"killstream\"}}"
            )
        })?;
        let subscribing = match message.action.as_str() {
            "sub" => true,
            "unsub" => false,
            other => return Err(format!("unknown action `{other}`: sub or unsub")),
        };
        let name = message
            .channel
            .ok_or_else(|| format!("`{}` needs a `channel`", message.action))?;
        let channel = Channel::parse(&name)?;
        let mut index = self.websocket.index();
        if !subscribing {
            if self.channels.remove(&channel) {
                unsubscribe(&mut index, &channel, self.id);
            }
            return Ok(());
        }
        let max = self.websocket.inner.limits.max_channels;
        if !self.channels.contains(&channel) && self.channels.len() >= max {
            return Err(format!(
                "too many channels: at most {max} per connection; unsub one"
            ));
        }
        index.entry(channel.clone()).or_default().insert(self.id);
        self.channels.insert(channel);
        Ok(())
    }
}

/// What a channel's subscribers receive for `added`.
fn message(added: &KillmailAdded, channel: &Channel, statics: &Statics) -> Value {
    let killmail = &added.killmail;
    let hash = added.hash.as_deref().or_else(|| added.zkb.as_ref()?.hash());
    let zkb = zkb_with_hash(added.zkb.as_ref(), hash);
    if *channel == Channel::Killstream {
        let mut esi = serde_json::to_value(killmail).expect("a killmail always serializes");
        esi["zkb"] = zkb;
        return esi;
    }
    let victim = &killmail.victim;
    let id = killmail.killmail_id.0;
    json!({
        "action": "littlekill",
        "killID": id,
        "character_id": victim.character_id,
        "corporation_id": victim.corporation_id,
        "alliance_id": victim.alliance_id,
        "ship_type_id": victim.ship_type_id,
        "group_id": statics.group_of(victim.ship_type_id),
        "url": format!("https://zkillboard.com/kill/{id}/"),
        "channel": channel.to_string(),
    })
}
