//! Creates retried with their request id (AIP-155): PostMessage, CreateRoom, CreateRoomItem and
//! ScheduleMeeting make their row once however often a request is sent, alone or at once, and
//! answer every attempt with that row; an id is the caller's own, one create's only, and kept
//! for a day and no longer than its workspace.

use crate::races::hold_numbering;
use crate::support::*;
use service_harness::RunningServer;
use tonic::{Code, Status};
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

const ORG: &str = "org_retry";

/// The four creates that take a request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    Message,
    Room,
    Item,
    Meeting,
}

const CREATES: [Create; 4] = [Create::Message, Create::Room, Create::Item, Create::Meeting];

impl Create {
    /// The table its rows go to.
    fn table(self) -> &'static str {
        match self {
            Create::Message => "messages",
            Create::Room => "rooms",
            Create::Item => "documents",
            Create::Meeting => "meetings",
        }
    }
}

/// What a create answered.
#[derive(Debug, Clone, PartialEq)]
enum Made {
    Message(pb::Message),
    Room(pb::Room),
    Item(pb::RoomItem),
    Meeting(pb::Meeting),
}

impl Made {
    fn id(&self) -> &str {
        match self {
            Made::Message(m) => &m.id,
            Made::Room(r) => &r.id,
            Made::Item(i) => &i.id,
            Made::Meeting(m) => &m.id,
        }
    }

    /// Who it was created by (its author, for a message).
    fn creator(&self) -> &str {
        match self {
            Made::Message(m) => &m.author_clerk_id,
            Made::Room(_) => "",
            Made::Item(i) => &i.created_by,
            Made::Meeting(m) => &m.created_by,
        }
    }
}

/// [`ORG`]'s workspace id and two parents of each kind there: channels, document rooms,
/// conference rooms.
struct Parents {
    workspace: String,
    channels: [String; 2],
    documents: [String; 2],
    conferences: [String; 2],
}

async fn parents(env: &Env) -> Parents {
    let workspace = env.workspace(ORG).await.id;
    let mut c = env.client().await;
    let mut channels = Vec::new();
    for name in ["one", "two"] {
        let ch = c
            .create_channel(env.admin(
                "user_a",
                ORG,
                pb::CreateChannelRequest {
                    clerk_org_id: ORG.into(),
                    name: name.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .channel
            .unwrap();
        channels.push(ch.id);
    }
    let mut rooms = Vec::new();
    for kind in [pb::RoomKind::Document, pb::RoomKind::Conference] {
        for _ in 0..2 {
            let room = c
                .create_room(env.admin(
                    "user_a",
                    ORG,
                    pb::CreateRoomRequest {
                        clerk_org_id: ORG.into(),
                        kind: kind.into(),
                        name: "parent".into(),
                        request_id: String::new(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .room
                .unwrap();
            rooms.push(room.id);
        }
    }
    let two = |v: &[String]| [v[0].clone(), v[1].clone()];
    Parents {
        workspace,
        channels: two(&channels),
        documents: two(&rooms[0..2]),
        conferences: two(&rooms[2..4]),
    }
}

/// Attempt `what` as `user` (an admin of [`ORG`]) in the `which`th parent of its kind, with
/// `request_id`, and `text` as its body, name or title.
async fn attempt(
    env: &Env,
    p: &Parents,
    what: Create,
    user: &str,
    which: usize,
    request_id: &str,
    text: &str,
) -> Result<Made, Status> {
    attempt_as(env, p, what, Who::User(user), which, request_id, text).await
}

/// Who attempts a create.
#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    /// A user, an admin of [`ORG`].
    User(&'a str),
    /// A service, posting as this author (other creates name none).
    Service(&'a str),
}

async fn attempt_as(
    env: &Env,
    p: &Parents,
    what: Create,
    who: Who<'_>,
    which: usize,
    request_id: &str,
    text: &str,
) -> Result<Made, Status> {
    let mut c = env.client().await;
    let (request_id, text) = (request_id.to_owned(), text.to_owned());
    let author = match who {
        Who::Service(author) => author.to_owned(),
        Who::User(_) => String::new(),
    };
    Ok(match what {
        Create::Message => Made::Message(
            c.post_message(as_who(
                env,
                who,
                pb::PostMessageRequest {
                    channel_id: p.channels[which].clone(),
                    body: text,
                    author_clerk_id: author,
                    request_id,
                },
            ))
            .await?
            .into_inner()
            .message
            .unwrap(),
        ),
        Create::Room => Made::Room(
            c.create_room(as_who(
                env,
                who,
                pb::CreateRoomRequest {
                    clerk_org_id: ORG.into(),
                    kind: pb::RoomKind::Whiteboard.into(),
                    name: text,
                    request_id,
                },
            ))
            .await?
            .into_inner()
            .room
            .unwrap(),
        ),
        Create::Item => Made::Item(
            c.create_room_item(as_who(
                env,
                who,
                pb::CreateRoomItemRequest {
                    room_id: p.documents[which].clone(),
                    kind: pb::ItemKind::Document.into(),
                    name: text,
                    language: String::new(),
                    request_id,
                },
            ))
            .await?
            .into_inner()
            .item
            .unwrap(),
        ),
        Create::Meeting => Made::Meeting(
            c.schedule_meeting(as_who(
                env,
                who,
                pb::ScheduleMeetingRequest {
                    room_id: p.conferences[which].clone(),
                    title: text,
                    starts_at: ts(2_000_000_000),
                    ends_at: ts(2_000_003_600),
                    request_id,
                },
            ))
            .await?
            .into_inner()
            .meeting
            .unwrap(),
        ),
    })
}

/// `msg` as sent by `who`.
fn as_who<T>(env: &Env, who: Who<'_>, msg: T) -> tonic::Request<T> {
    match who {
        Who::User(user) => env.admin(user, ORG, msg),
        Who::Service(_) => env.service(msg),
    }
}

fn fresh() -> String {
    Uuid::new_v4().to_string()
}

/// Rows of every table a create writes: its four tables, the request ids and the change log.
async fn written(env: &Env) -> Vec<(&'static str, i64)> {
    let mut n = Vec::new();
    for t in CREATES
        .map(Create::table)
        .into_iter()
        .chain(["create_requests", "change_log"])
    {
        n.push((t, env.count(t).await));
    }
    n
}

fn invalid(r: Result<Made, Status>) -> String {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    s.message().to_owned()
}

/// Sent twice with one request id (the second time with other text, as a client that rebuilt
/// its request would), each create makes one row and answers both attempts with it; another
/// id makes another row, and so does every attempt without one.
#[tokio::test]
async fn a_create_sent_twice_with_one_request_id_makes_one_row() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    for what in CREATES {
        let before = env.count(what.table()).await;
        let id = fresh();
        let first = attempt(&env, &p, what, "user_a", 0, &id, "first")
            .await
            .unwrap();
        let log = env.count("change_log").await;
        let again = attempt(&env, &p, what, "user_a", 0, &id, "again")
            .await
            .unwrap();
        assert_eq!(again, first, "{what:?}: the retry answers the first row");
        assert_eq!(env.count(what.table()).await, before + 1, "{what:?}");
        assert_eq!(
            env.count("change_log").await,
            log,
            "{what:?}: the retry recorded no change"
        );
        let other = attempt(&env, &p, what, "user_a", 0, &fresh(), "other")
            .await
            .unwrap();
        assert_ne!(other.id(), first.id(), "{what:?}");
        assert_eq!(env.count(what.table()).await, before + 2, "{what:?}");
        for _ in 0..2 {
            attempt(&env, &p, what, "user_a", 0, "", "no id")
                .await
                .unwrap();
        }
        assert_eq!(
            env.count(what.table()).await,
            before + 4,
            "{what:?}: without an id each attempt creates"
        );
    }
    assert_eq!(env.count("create_requests").await, 8);
}

/// An id is one create's: sent again for another channel or room, or for another kind of
/// create, it is refused with INVALID_ARGUMENT, and nothing is written.
#[tokio::test]
async fn a_request_id_reused_for_another_create_is_refused_and_writes_nothing() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    for what in CREATES {
        let id = fresh();
        attempt(&env, &p, what, "user_a", 0, &id, "first")
            .await
            .unwrap();
        let before = written(&env).await;
        let mut reuses: Vec<(Create, usize)> = CREATES
            .into_iter()
            .filter(|&other| other != what)
            .map(|other| (other, 0))
            .collect();
        if what != Create::Room {
            reuses.push((what, 1));
        }
        for (other, which) in reuses {
            let refused = invalid(attempt(&env, &p, other, "user_a", which, &id, "reused").await);
            assert!(
                refused.contains("request_id was already used for another request"),
                "{what:?} then {other:?} in parent {which}: {refused}"
            );
        }
        assert_eq!(written(&env).await, before, "{what:?}: nothing written");
    }
}

/// A request id that is not a UUID (or is the nil UUID, which every create would share) is
/// refused naming the field, before anything is written.
#[tokio::test]
async fn a_request_id_that_is_not_a_uuid_is_refused_naming_the_field() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    let before = written(&env).await;
    for what in CREATES {
        for bad in ["retry-1", "00000000-0000-0000-0000-000000000000"] {
            let refused = invalid(attempt(&env, &p, what, "user_a", 0, bad, "x").await);
            assert!(refused.contains("request_id"), "{what:?} {bad}: {refused}");
        }
    }
    assert_eq!(written(&env).await, before);
}

/// One user's request id never answers another's create: another user (or a service posting
/// for the first user) sending the same id gets a row of their own.
#[tokio::test]
async fn another_caller_reusing_a_request_id_gets_their_own_row() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    for what in CREATES {
        let id = fresh();
        let a = attempt(&env, &p, what, "user_a", 0, &id, "a's")
            .await
            .unwrap();
        let b = attempt(&env, &p, what, "user_b", 0, &id, "b's")
            .await
            .unwrap();
        assert_ne!(b.id(), a.id(), "{what:?}: user_b got user_a's row");
        if what != Create::Room {
            assert_eq!(b.creator(), "user_b", "{what:?}");
        }
        let by_service = attempt_as(&env, &p, what, Who::Service("user_a"), 0, &id, "svc")
            .await
            .unwrap();
        assert_ne!(
            by_service.id(),
            a.id(),
            "{what:?}: a service got user_a's row"
        );
        assert_ne!(by_service.id(), b.id(), "{what:?}");
        // Each of the three answers their own retry with their own row.
        let again = attempt(&env, &p, what, "user_b", 0, &id, "b's")
            .await
            .unwrap();
        assert_eq!(again, b, "{what:?}");
    }
}

/// Two attempts of one create at once (the first waits at the workspace's numbering, the
/// second at the request id the first holds): one row, and both answer it.
#[tokio::test]
async fn two_attempts_at_once_with_one_request_id_make_one_row() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    let ws = p.workspace.clone();
    let env = std::sync::Arc::new(env);
    let p = std::sync::Arc::new(p);
    for what in CREATES {
        let before = env.count(what.table()).await;
        let id = fresh();
        let held = hold_numbering(&env, &ws).await;
        let tries: Vec<_> = (0..2)
            .map(|_| {
                let (env, p, id) = (env.clone(), p.clone(), id.clone());
                tokio::spawn(
                    async move { attempt(&env, &p, what, "user_a", 0, &id, "at once").await },
                )
            })
            .collect();
        env.lock_waiters(2).await;
        drop(held);
        let mut answers = Vec::new();
        for t in tries {
            answers.push(t.await.unwrap().expect("both attempts answer"));
        }
        assert_eq!(answers[0], answers[1], "{what:?}");
        assert_eq!(env.count(what.table()).await, before + 1, "{what:?}");
    }
}

/// A post that committed but whose answer was never read (the connection went before the
/// client read it): the retry answers the message posted, and posts no second one.
#[tokio::test]
async fn a_retry_after_an_answer_lost_in_transit_answers_the_committed_post() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    let id = fresh();
    let lost = unread_call(
        env.server.addr,
        "PostMessage",
        env.admin(
            "user_a",
            ORG,
            pb::PostMessageRequest {
                channel_id: p.channels[0].clone(),
                body: "sent once".into(),
                author_clerk_id: String::new(),
                request_id: id.clone(),
            },
        ),
    )
    .await;
    drop(lost);
    assert_eq!(
        env.count("messages").await,
        1,
        "the first attempt committed"
    );
    let retry = attempt(&env, &p, Create::Message, "user_a", 0, &id, "sent once")
        .await
        .unwrap();
    assert_eq!(env.count("messages").await, 1, "the retry posted nothing");
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM messages WHERE id = '{}'",
            retry.id()
        ))
        .await,
        1
    );
}

/// A retry whose row was deleted since the first attempt is told so (NOT_FOUND), and creates
/// nothing; a meeting, cancelled rather than deleted, is answered cancelled.
#[tokio::test]
async fn a_retry_of_a_create_deleted_since_is_told_so() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    let mut c = env.client().await;
    for what in CREATES {
        let id = fresh();
        let made = attempt(&env, &p, what, "user_a", 0, &id, "short-lived")
            .await
            .unwrap();
        match &made {
            Made::Message(m) => drop(
                c.delete_message(as_who(
                    &env,
                    Who::User("user_a"),
                    pb::DeleteMessageRequest {
                        message_id: m.id.clone(),
                    },
                ))
                .await
                .unwrap(),
            ),
            Made::Room(r) => drop(
                c.delete_room(as_who(
                    &env,
                    Who::User("user_a"),
                    pb::DeleteRoomRequest {
                        room_id: r.id.clone(),
                    },
                ))
                .await
                .unwrap(),
            ),
            Made::Item(i) => drop(
                c.delete_room_item(as_who(
                    &env,
                    Who::User("user_a"),
                    pb::DeleteRoomItemRequest {
                        kind: pb::ItemKind::Document.into(),
                        item_id: i.id.clone(),
                    },
                ))
                .await
                .unwrap(),
            ),
            Made::Meeting(m) => drop(
                c.cancel_meeting(as_who(
                    &env,
                    Who::User("user_a"),
                    pb::CancelMeetingRequest {
                        meeting_id: m.id.clone(),
                    },
                ))
                .await
                .unwrap(),
            ),
        }
        // A deleted room's purge is done before the rows are counted.
        env.purges_done().await;
        let before = written(&env).await;
        let retry = attempt(&env, &p, what, "user_a", 0, &id, "short-lived").await;
        assert_eq!(written(&env).await, before, "{what:?}: nothing written");
        match retry {
            Ok(Made::Meeting(m)) => {
                assert_eq!(m.id, made.id());
                assert!(m.cancelled, "answered as it is now");
            }
            other => {
                let e = other.expect_err("the row is gone");
                assert_eq!(e.code(), Code::NotFound, "{what:?}: {e:?}");
                assert!(e.message().contains("deleted since"), "{what:?}: {e:?}");
            }
        }
    }
}

/// Request ids are kept a day: older ones go with the hourly prune (after which the id would
/// create again), and a deleted workspace's go with its purge.
#[tokio::test]
async fn request_ids_go_after_a_day_and_with_their_workspace() {
    let env = start_with(false).await;
    let p = parents(&env).await;
    let ids: Vec<String> = CREATES.iter().map(|_| fresh()).collect();
    for (what, id) in CREATES.into_iter().zip(&ids) {
        attempt(&env, &p, what, "user_a", 0, id, "kept a day")
            .await
            .unwrap();
    }
    assert_eq!(env.count("create_requests").await, 4);
    // Two of them a day old: a replica's prune, at its start, removes them.
    env.sql(&format!(
        "UPDATE create_requests SET created_at = now() - interval '24 hours 1 minute'
          WHERE request_id IN ('{}', '{}')",
        ids[0], ids[1]
    ))
    .await;
    let pruning = RunningServer::start(|l, sd| {
        workspace_service::run(config(env.db.url(), &env.issuers, None), l, sd)
    })
    .await;
    eventually(
        "the day-old request ids pruned",
        std::time::Duration::from_secs(10),
        || async { env.count("create_requests").await == 2 },
    )
    .await;
    pruning.stop().await.unwrap();
    let left = env
        .scalar(&format!(
            "SELECT count(*) FROM create_requests WHERE request_id IN ('{}', '{}')",
            ids[2], ids[3]
        ))
        .await;
    assert_eq!(left, 2, "younger ids are kept");
    // The workspace's purge removes the rest.
    env.client()
        .await
        .delete_workspace(env.service(delete_ws("d-retry", 50, ORG)))
        .await
        .unwrap();
    env.purges_done().await;
    assert_eq!(env.count("create_requests").await, 0);
    env.assert_only_bookkeeping_left().await;
}
