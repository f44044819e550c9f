//! The seeded model of a Clerk instance: a history of user, organization and membership events
//! with Clerk's shapes and clocks, and the state it leaves (Clerk's truth).
//!
//! Users are created, renamed, deleted and re-created under new ids (same person, same email);
//! organizations are created (with their creator as admin, as Clerk does), renamed and deleted;
//! memberships are created, have their role changed, are deleted and re-created under new ids.
//! Deleting a user or an organization removes its memberships in Clerk without membership
//! events (Clerk documents none). Clerk's clock moves forward by 1 ms to 3 s per event and ends
//! before the soak starts; `updated_at` of a resource is the time of its last event, and the
//! envelope `timestamp` the time of the event.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The Clerk instance every event names (the development stack's).
pub const INSTANCE: &str = vbase_stack::DEV_CLERK_INSTANCE;

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub first: String,
    pub last: String,
    pub email: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl User {
    /// The name identity-service stores (first + last).
    pub fn name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    /// `UserJSON`.
    pub fn json(&self) -> Value {
        let mut v = stand_ins::user_json(
            &self.id,
            &self.first,
            &self.email,
            self.created_at,
            self.updated_at,
        );
        v["last_name"] = json!(self.last);
        v
    }
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Org {
    /// `OrganizationJSON`.
    pub fn json(&self) -> Value {
        stand_ins::org_json(
            &self.id,
            &self.name,
            &self.created_by,
            self.created_at,
            self.updated_at,
        )
    }
}

#[derive(Debug, Clone)]
pub struct Membership {
    pub id: String,
    pub org: String,
    pub user: String,
    pub role: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Membership {
    /// `OrganizationMembershipJSON`.
    pub fn json(&self) -> Value {
        stand_ins::membership_json(
            &self.id,
            &self.org,
            &self.user,
            &self.role,
            self.created_at,
            self.updated_at,
        )
    }
}

/// What an event changes in Clerk's state (applied to the Backend API stand-in when the event
/// is emitted).
#[derive(Debug, Clone)]
pub enum Change {
    PutUser(User),
    /// The user and the ids of the memberships that went with it.
    RemoveUser(String, Vec<String>),
    PutOrg(Org),
    /// The organization and the ids of its memberships.
    RemoveOrg(String, Vec<String>),
    PutMembership(Membership),
    RemoveMembership(Membership),
}

/// One Clerk event and its Svix delivery id.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: usize,
    /// `svix-id` (`msg_...`), the same for every attempt and duplicate.
    pub svix_id: String,
    pub kind: &'static str,
    /// The rows it touches: `user:ID`, `org:ID`, `membership:ORG/USER`.
    pub keys: Vec<String>,
    /// Envelope `timestamp` (ms).
    pub at: i64,
    pub body: Vec<u8>,
    pub change: Change,
}

/// Clerk's state after the history.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub users: BTreeMap<String, User>,
    pub orgs: BTreeMap<String, Org>,
    /// By (org, user).
    pub memberships: BTreeMap<(String, String), Membership>,
    pub deleted_users: BTreeSet<String>,
    pub deleted_orgs: BTreeSet<String>,
}

/// The history and its end state.
#[derive(Debug)]
pub struct History {
    pub events: Vec<Event>,
    pub truth: Truth,
}

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Frances", "Donald", "Radia", "Leslie",
    "Margaret", "Dennis", "Joan", "Niklaus", "Karen", "Tony",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Allen", "Knuth", "Perlman",
    "Lamport", "Hamilton", "Ritchie", "Clarke", "Wirth", "Jones", "Hoare",
];
const ROLES: &[&str] = &["org:member", "org:admin", "org:viewer"];

/// A Clerk-like id: `prefix_` and 27 base62 characters.
fn clerk_id(rng: &mut StdRng, prefix: &str) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let s: String = (0..27)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect();
    format!("{prefix}_{s}")
}

fn pick<'a, T>(rng: &mut StdRng, v: &'a [T]) -> Option<&'a T> {
    (!v.is_empty()).then(|| &v[rng.random_range(0..v.len())])
}

struct Gen {
    rng: StdRng,
    now: i64,
    seed: u64,
    truth: Truth,
    /// Emails of deleted people, for re-creation under a new id.
    gone_people: Vec<(String, String, String)>,
    events: Vec<Event>,
}

impl Gen {
    fn emit(&mut self, kind: &'static str, keys: Vec<String>, data: Value, change: Change) {
        let seq = self.events.len();
        let body = json!({
            "data": data, "object": "event", "type": kind, "timestamp": self.now,
            "instance_id": INSTANCE,
            "event_attributes": {"http_request": {"client_ip": "127.0.0.1", "user_agent": "vbase-soak"}}
        });
        self.events.push(Event {
            seq,
            svix_id: format!("msg_soak{}x{seq}", self.seed),
            kind,
            keys,
            at: self.now,
            body: body.to_string().into_bytes(),
            change,
        });
    }

    fn tick(&mut self) {
        self.now += self.rng.random_range(1..3000);
    }

    fn create_user(&mut self) {
        let (first, last, email) = if !self.gone_people.is_empty() && self.rng.random_bool(0.3) {
            let i = self.rng.random_range(0..self.gone_people.len());
            self.gone_people.swap_remove(i)
        } else {
            let first = pick(&mut self.rng, FIRST).unwrap().to_string();
            let last = pick(&mut self.rng, LAST).unwrap().to_string();
            let n = self.events.len();
            let email = format!(
                "{}.{}{n}@example.org",
                first.to_lowercase(),
                last.to_lowercase()
            );
            (first, last, email)
        };
        let u = User {
            id: clerk_id(&mut self.rng, "user"),
            first,
            last,
            email,
            created_at: self.now,
            updated_at: self.now,
        };
        self.truth.users.insert(u.id.clone(), u.clone());
        self.emit(
            "user.created",
            vec![format!("user:{}", u.id)],
            u.json(),
            Change::PutUser(u),
        );
    }

    fn update_user(&mut self, id: &str) {
        let mut u = self.truth.users[id].clone();
        if self.rng.random_bool(0.5) {
            u.first = pick(&mut self.rng, FIRST).unwrap().to_string();
        } else {
            u.last = pick(&mut self.rng, LAST).unwrap().to_string();
        }
        if self.rng.random_bool(0.2) {
            u.email = format!("changed{}.{}", self.events.len(), u.email);
        }
        u.updated_at = self.now;
        self.truth.users.insert(u.id.clone(), u.clone());
        self.emit(
            "user.updated",
            vec![format!("user:{id}")],
            u.json(),
            Change::PutUser(u),
        );
    }

    fn delete_user(&mut self, id: &str) {
        let u = self.truth.users.remove(id).unwrap();
        self.truth.deleted_users.insert(id.to_owned());
        self.gone_people.push((u.first, u.last, u.email));
        let mut keys = vec![format!("user:{id}")];
        let gone: Vec<_> = self
            .truth
            .memberships
            .keys()
            .filter(|(_, user)| user == id)
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for k in gone {
            removed.extend(self.truth.memberships.remove(&k));
            keys.push(format!("membership:{}/{}", k.0, k.1));
        }
        let ids = removed.iter().map(|m| m.id.clone()).collect();
        self.emit(
            "user.deleted",
            keys,
            json!({"deleted": true, "id": id, "object": "user"}),
            Change::RemoveUser(id.to_owned(), ids),
        );
        self.cascade(removed);
    }

    /// Half the time, `organizationMembership.deleted` for each membership a user's or an
    /// organization's deletion removed (Clerk does not document whether it sends them).
    fn cascade(&mut self, removed: Vec<Membership>) {
        if !self.rng.random_bool(0.5) {
            return;
        }
        for mut m in removed {
            self.tick();
            m.updated_at = self.now;
            self.emit(
                "organizationMembership.deleted",
                vec![format!("membership:{}/{}", m.org, m.user)],
                m.json(),
                Change::RemoveMembership(m),
            );
        }
    }

    fn create_org(&mut self, creator: &str) {
        let o = Org {
            id: clerk_id(&mut self.rng, "org"),
            name: format!("Team {}", self.events.len()),
            created_by: creator.to_owned(),
            created_at: self.now,
            updated_at: self.now,
        };
        self.truth.orgs.insert(o.id.clone(), o.clone());
        self.emit(
            "organization.created",
            vec![format!("org:{}", o.id)],
            o.json(),
            Change::PutOrg(o.clone()),
        );
        // Clerk makes the creator an admin.
        self.tick();
        self.create_membership(&o.id, creator, "org:admin");
    }

    fn create_membership(&mut self, org: &str, user: &str, role: &str) {
        let m = Membership {
            id: clerk_id(&mut self.rng, "orgmem"),
            org: org.to_owned(),
            user: user.to_owned(),
            role: role.to_owned(),
            created_at: self.now,
            updated_at: self.now,
        };
        self.truth
            .memberships
            .insert((org.to_owned(), user.to_owned()), m.clone());
        self.emit(
            "organizationMembership.created",
            vec![format!("membership:{org}/{user}")],
            m.json(),
            Change::PutMembership(m),
        );
    }

    fn step(&mut self) {
        let users: Vec<String> = self.truth.users.keys().cloned().collect();
        let orgs: Vec<String> = self.truth.orgs.keys().cloned().collect();
        let mems: Vec<(String, String)> = self.truth.memberships.keys().cloned().collect();
        let roll = self.rng.random_range(0..100);
        match roll {
            _ if users.len() < 8 || roll < 14 => self.create_user(),
            14..=27 => {
                let id = pick(&mut self.rng, &users).unwrap().clone();
                self.update_user(&id);
            }
            28..=33 => {
                let id = pick(&mut self.rng, &users).unwrap().clone();
                self.delete_user(&id);
            }
            _ if orgs.len() < 3 || roll < 40 => {
                let by = pick(&mut self.rng, &users).unwrap().clone();
                self.create_org(&by);
            }
            40..=47 => {
                let id = pick(&mut self.rng, &orgs).unwrap().clone();
                let mut o = self.truth.orgs[&id].clone();
                o.name = format!("Team {} renamed", self.events.len());
                o.updated_at = self.now;
                self.truth.orgs.insert(id.clone(), o.clone());
                self.emit(
                    "organization.updated",
                    vec![format!("org:{id}")],
                    o.json(),
                    Change::PutOrg(o),
                );
            }
            48..=51 => {
                let id = pick(&mut self.rng, &orgs).unwrap().clone();
                self.truth.orgs.remove(&id);
                self.truth.deleted_orgs.insert(id.clone());
                let mut keys = vec![format!("org:{id}")];
                let gone: Vec<_> = mems.iter().filter(|(o, _)| *o == id).cloned().collect();
                let mut removed = Vec::new();
                for k in gone {
                    removed.extend(self.truth.memberships.remove(&k));
                    keys.push(format!("membership:{}/{}", k.0, k.1));
                }
                let ids = removed.iter().map(|m| m.id.clone()).collect();
                self.emit(
                    "organization.deleted",
                    keys,
                    json!({"deleted": true, "id": id, "object": "organization"}),
                    Change::RemoveOrg(id, ids),
                );
                self.cascade(removed);
            }
            52..=79 => {
                let org = pick(&mut self.rng, &orgs).unwrap().clone();
                let user = pick(&mut self.rng, &users).unwrap().clone();
                if self
                    .truth
                    .memberships
                    .contains_key(&(org.clone(), user.clone()))
                {
                    return self.create_user();
                }
                let role = pick(&mut self.rng, ROLES).unwrap().to_string();
                self.create_membership(&org, &user, &role);
            }
            80..=89 if !mems.is_empty() => {
                let k = pick(&mut self.rng, &mems).unwrap().clone();
                let mut m = self.truth.memberships[&k].clone();
                let others: Vec<&str> = ROLES.iter().copied().filter(|r| *r != m.role).collect();
                m.role = pick(&mut self.rng, &others).unwrap().to_string();
                m.updated_at = self.now;
                self.truth.memberships.insert(k.clone(), m.clone());
                self.emit(
                    "organizationMembership.updated",
                    vec![format!("membership:{}/{}", k.0, k.1)],
                    m.json(),
                    Change::PutMembership(m),
                );
            }
            _ if !mems.is_empty() => {
                let k = pick(&mut self.rng, &mems).unwrap().clone();
                let mut m = self.truth.memberships.remove(&k).unwrap();
                m.updated_at = self.now;
                self.emit(
                    "organizationMembership.deleted",
                    vec![format!("membership:{}/{}", k.0, k.1)],
                    m.json(),
                    Change::RemoveMembership(m),
                );
            }
            _ => self.create_user(),
        }
    }
}

/// The history of `events` events from `seed`; Clerk's clock ends before `end_ms`.
pub fn generate(seed: u64, events: usize, end_ms: i64) -> History {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        // At most 3 s per event (and one more tick for an organization's first member).
        now: end_ms - (events as i64 + 10) * 6000,
        seed,
        truth: Truth::default(),
        gone_people: Vec::new(),
        events: Vec::with_capacity(events + 1),
    };
    while g.events.len() < events {
        g.tick();
        g.step();
    }
    History {
        events: g.events,
        truth: g.truth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_history() {
        let a = generate(7, 500, 1_800_000_000_000);
        let b = generate(7, 500, 1_800_000_000_000);
        assert_eq!(
            a.events.iter().map(|e| &e.body).collect::<Vec<_>>(),
            b.events.iter().map(|e| &e.body).collect::<Vec<_>>()
        );
        let kinds: BTreeSet<_> = a.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds.len(), 9, "every event type occurs: {kinds:?}");
        assert!(a.events.windows(2).all(|w| w[0].at < w[1].at));
    }
}
