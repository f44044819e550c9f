//! Users' traffic during the soak: rooms and their items created (each a Liveblocks room),
//! rooms deleted, messages posted, edited and deleted in each workspace's first channel. Calls
//! go as the stack's internal caller on behalf of an author. What each call was answered is
//! recorded: an answered call is committed, a call without an answer is ambiguous (excluded
//! from the exact checks).

use crate::deliver::Live;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use token_auth::signing::ServiceTokenMinter;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as wsp;
use wsp::workspace_service_client::WorkspaceServiceClient;

/// A room created (answered), with the Liveblocks rooms of the items created in it.
#[derive(Debug, Clone)]
pub struct Room {
    pub org: String,
    pub id: String,
    pub kind: i32,
    pub liveblocks: String,
    pub items: Vec<String>,
    /// DeleteRoom was answered OK.
    pub deleted: bool,
    /// DeleteRoom got an error or no answer: it may or may not be deleted.
    pub ambiguous: bool,
}

/// A message posted (answered).
#[derive(Debug, Clone)]
pub struct Message {
    pub org: String,
    /// The body of the last answered post or edit.
    pub body: String,
    pub deleted: bool,
    /// An edit or delete got no answer: its outcome is unknown.
    pub ambiguous: bool,
}

/// What the traffic did.
#[derive(Debug, Default)]
pub struct Record {
    pub rooms: Vec<Room>,
    pub messages: BTreeMap<String, Message>,
    pub calls: u64,
    pub failed: u64,
}

/// Author recorded on posts (the traffic calls as an internal service).
pub const AUTHOR: &str = "user_soakauthor";

struct Ctx {
    client: WorkspaceServiceClient<Channel>,
    minter: Arc<ServiceTokenMinter>,
    channels: HashMap<String, String>,
    rng: StdRng,
    rec: Record,
}

impl Ctx {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let token = self
            .minter
            .token_for("workspace-service")
            .unwrap_or_default();
        let mut r = service_harness::bearer(msg, &token);
        r.set_timeout(Duration::from_secs(5));
        r
    }

    async fn channel_of(&mut self, org: &str) -> Option<String> {
        if let Some(c) = self.channels.get(org) {
            return Some(c.clone());
        }
        let r = self.req(wsp::ListChannelsRequest {
            clerk_org_id: org.into(),
            page_size: 1,
            page_token: String::new(),
        });
        let c = self.client.list_channels(r).await.ok()?.into_inner();
        let id = c.channels.first()?.id.clone();
        self.channels.insert(org.into(), id.clone());
        Some(id)
    }

    async fn one(&mut self, org: String, n: u64) -> bool {
        let roll = self.rng.random_range(0..100);
        let rooms_here: Vec<usize> = (0..self.rec.rooms.len())
            .filter(|&i| {
                let r = &self.rec.rooms[i];
                r.org == org && !r.deleted && !r.ambiguous
            })
            .collect();
        let msgs_here: Vec<String> = self
            .rec
            .messages
            .iter()
            .filter(|(_, m)| m.org == org && !m.deleted && !m.ambiguous)
            .map(|(k, _)| k.clone())
            .collect();
        match roll {
            0..30 => {
                let kind = self.rng.random_range(1..=4);
                let r = self.req(wsp::CreateRoomRequest {
                    clerk_org_id: org.clone(),
                    kind,
                    name: format!("room {n}"),
                    request_id: String::new(),
                });
                let Ok(room) = self.client.create_room(r).await else {
                    return false;
                };
                if let Some(room) = room.into_inner().room {
                    self.rec.rooms.push(Room {
                        org,
                        id: room.id,
                        kind,
                        liveblocks: room.liveblocks_room_id,
                        items: Vec::new(),
                        deleted: false,
                        ambiguous: false,
                    });
                }
                true
            }
            30..45 if !rooms_here.is_empty() => {
                let i = rooms_here[self.rng.random_range(0..rooms_here.len())];
                let kind = self.rec.rooms[i].kind;
                if kind == 4 {
                    return true;
                }
                let r = self.req(wsp::CreateRoomItemRequest {
                    room_id: self.rec.rooms[i].id.clone(),
                    kind,
                    name: format!("item {n}"),
                    language: String::new(),
                    request_id: String::new(),
                });
                let Ok(item) = self.client.create_room_item(r).await else {
                    return false;
                };
                if let Some(item) = item.into_inner().item {
                    self.rec.rooms[i].items.push(item.liveblocks_room_id);
                }
                true
            }
            45..50 if !rooms_here.is_empty() => {
                let i = rooms_here[self.rng.random_range(0..rooms_here.len())];
                let r = self.req(wsp::DeleteRoomRequest {
                    room_id: self.rec.rooms[i].id.clone(),
                });
                let ok = self.client.delete_room(r).await.is_ok();
                if ok {
                    self.rec.rooms[i].deleted = true;
                } else {
                    self.rec.rooms[i].ambiguous = true;
                }
                ok
            }
            50..85 => {
                let Some(channel_id) = self.channel_of(&org).await else {
                    return false;
                };
                let body = format!("soak message {n} {}", self.rng.random::<u32>());
                let r = self.req(wsp::PostMessageRequest {
                    channel_id,
                    body: body.clone(),
                    author_clerk_id: AUTHOR.into(),
                    request_id: String::new(),
                });
                let Ok(m) = self.client.post_message(r).await else {
                    return false;
                };
                if let Some(m) = m.into_inner().message {
                    self.rec.messages.insert(
                        m.id,
                        Message {
                            org,
                            body,
                            deleted: false,
                            ambiguous: false,
                        },
                    );
                }
                true
            }
            85..95 if !msgs_here.is_empty() => {
                let id = msgs_here[self.rng.random_range(0..msgs_here.len())].clone();
                let body = format!("soak edit {n} {}", self.rng.random::<u32>());
                let r = self.req(wsp::EditMessageRequest {
                    message_id: id.clone(),
                    body: body.clone(),
                });
                let res = self.client.edit_message(r).await;
                let m = self.rec.messages.get_mut(&id).expect("known");
                match res {
                    Ok(_) => m.body = body,
                    Err(_) => m.ambiguous = true,
                }
                res.is_ok()
            }
            95.. if !msgs_here.is_empty() => {
                let id = msgs_here[self.rng.random_range(0..msgs_here.len())].clone();
                let r = self.req(wsp::DeleteMessageRequest {
                    message_id: id.clone(),
                });
                let res = self.client.delete_message(r).await;
                let m = self.rec.messages.get_mut(&id).expect("known");
                match res {
                    Ok(_) => m.deleted = true,
                    Err(_) => m.ambiguous = true,
                }
                res.is_ok()
            }
            _ => true,
        }
    }
}

/// Runs until `live.stop`, `rate` calls per second at most; returns what it did.
pub async fn run(
    addr: std::net::SocketAddr,
    minter: Arc<ServiceTokenMinter>,
    live: Arc<Live>,
    seed: u64,
    rate: f64,
) -> Record {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut ctx = Ctx {
        client: WorkspaceServiceClient::new(channel),
        minter,
        channels: HashMap::new(),
        rng: StdRng::seed_from_u64(seed ^ 0x7aff1c),
        rec: Record::default(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut n = 0u64;
    while !live.stop.load(Relaxed) {
        tick.tick().await;
        let org = {
            let orgs = live.orgs.lock().unwrap();
            let hot: Vec<String> = live
                .hot
                .lock()
                .unwrap()
                .iter()
                .filter(|o| orgs.contains(*o))
                .cloned()
                .collect();
            if !hot.is_empty() && ctx.rng.random_bool(0.5) {
                Some(hot[ctx.rng.random_range(0..hot.len())].clone())
            } else if orgs.is_empty() {
                None
            } else {
                let i = ctx.rng.random_range(0..orgs.len());
                orgs.iter().nth(i).cloned()
            }
        };
        let Some(org) = org else { continue };
        n += 1;
        ctx.rec.calls += 1;
        if !ctx.one(org, n).await {
            ctx.rec.failed += 1;
        }
    }
    ctx.rec
}
