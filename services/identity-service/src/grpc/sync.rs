//! The gateway's sync commands: upserts (group-committed), deletes, each counted by outcome.

use super::*;

fn outcome(o: Outcome) -> (pb::CommandOutcome, &'static str) {
    match o {
        Outcome::Applied => (pb::CommandOutcome::Applied, "applied"),
        Outcome::Duplicate => (pb::CommandOutcome::Duplicate, "duplicate"),
        Outcome::Stale => (pb::CommandOutcome::Stale, "stale"),
    }
}

impl IdentityApi {
    /// Validates and applies one webhook upsert (through the group commit).
    async fn upsert_one(&self, c: &pb::UpsertUserCommand) -> Result<pb::CommandOutcome, Status> {
        let cmd = (|| {
            validate::event_id(&c.event_id)?;
            let occurred_at = validate::occurred_at(c.occurred_at.as_ref())?;
            validate::user_id("clerk_id", &c.clerk_id)?;
            validate::text("name", &c.name, validate::MAX_NAME_LEN)?;
            validate::email(&c.email)?;
            validate::url("image_url", &c.image_url)?;
            Ok::<_, Error>(users::UpsertUser {
                event_id: c.event_id.clone(),
                occurred_at,
                clerk_id: c.clerk_id.clone(),
                name: c.name.trim().to_owned(),
                email: c.email.clone(),
                image_url: c.image_url.clone(),
                created_at: validate::optional_created_time("created_at", c.created_at.as_ref())?,
                event_time: validate::optional_source_time("event_time", c.event_time.as_ref())?,
                // Absent (an older gateway, or not banned): nothing revoked.
                tokens_revoked_at: validate::optional_source_time(
                    "tokens_revoked_at",
                    c.tokens_revoked_at.as_ref(),
                )?,
            })
        })();
        let result = match cmd {
            Ok(cmd) => match self.ledger.note_instance(&c.instance_id).await {
                Ok(()) => {
                    let done = self.upserts.upsert(cmd).await;
                    self.lookups.forget(&c.clerk_id);
                    done
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.record("upsert_user", result)
    }

    fn record(
        &self,
        command: &'static str,
        r: Result<Outcome, Error>,
    ) -> Result<pb::CommandOutcome, Status> {
        match r {
            Ok(o) => {
                let (proto, label) = outcome(o);
                self.metrics.command(command, label);
                Ok(proto)
            }
            Err(e) => {
                self.metrics.command(
                    command,
                    if matches!(e, Error::Invalid(_)) {
                        "invalid"
                    } else {
                        "error"
                    },
                );
                Err(e.into())
            }
        }
    }
}

pub(super) async fn upsert_user(
    api: &IdentityApi,
    req: Request<pb::UpsertUserCommand>,
) -> Result<Response<pb::UpsertUserResponse>, Status> {
    let outcome = api.upsert_one(&req.into_inner()).await?;
    Ok(Response::new(pb::UpsertUserResponse {
        outcome: outcome.into(),
    }))
}

pub(super) async fn upsert_users(
    api: &IdentityApi,
    req: Request<pb::UpsertUsersCommand>,
) -> Result<Response<pb::UpsertUsersResponse>, Status> {
    let commands = req.into_inner().commands;
    if commands.len() > MAX_UPSERTS_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_UPSERTS_PER_CALL} commands per UpsertUsers call, got {}",
            commands.len()
        )));
    }
    // Concurrently, so they meet in the group commit as one batch.
    let results = futures::future::join_all(commands.iter().map(|c| async move {
        match api.upsert_one(c).await {
            Ok(outcome) => pb::UpsertResult {
                outcome: outcome.into(),
                code: 0,
                message: String::new(),
            },
            Err(status) => pb::UpsertResult {
                outcome: pb::CommandOutcome::Unspecified.into(),
                code: status.code() as i32,
                message: status.message().to_owned(),
            },
        }
    }))
    .await;
    Ok(Response::new(pb::UpsertUsersResponse { results }))
}

pub(super) async fn delete_user(
    api: &IdentityApi,
    req: Request<pb::DeleteUserCommand>,
) -> Result<Response<pb::DeleteUserResponse>, Status> {
    let c = req.into_inner();
    let cmd = (|| {
        validate::event_id(&c.event_id)?;
        let occurred_at = validate::optional_source_time("occurred_at", c.occurred_at.as_ref())?;
        validate::user_id("clerk_id", &c.clerk_id)?;
        Ok::<_, Error>(users::DeleteUser {
            event_id: c.event_id.clone(),
            occurred_at,
            clerk_id: c.clerk_id.clone(),
        })
    })();
    let result = match cmd {
        Ok(cmd) => match api.ledger.note_instance(&c.instance_id).await {
            Ok(()) => {
                let done = users::delete_user(&api.pool, cmd).await;
                api.lookups.forget(&c.clerk_id);
                done
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let outcome = api.record("delete_user", result)?;
    Ok(Response::new(pb::DeleteUserResponse {
        outcome: outcome.into(),
    }))
}
