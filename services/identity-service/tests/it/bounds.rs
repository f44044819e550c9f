//! What the servers decode at most. Health and reflection need no token, so each holds only a
//! small message per call and health serves `Check` alone; every service takes its largest
//! legitimate request and refuses a larger one before holding it whole.

use crate::support::{self, Env};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use vbase_proto::identity::v1 as pb;
use vbase_proto::ops::v1 as ops;
use vbase_proto::ops::v1::delivery_intake_service_client::DeliveryIntakeServiceClient;

fn check(service: String) -> HealthCheckRequest {
    HealthCheckRequest { service }
}

#[tokio::test]
async fn an_oversized_health_check_is_refused_and_health_keeps_answering() {
    let env = support::start().await;
    let mut health = HealthClient::new(env.server.channel().await);
    let over = service_runtime::open_services::HEALTH_MAX_MESSAGE;
    let refused = health.check(check("x".repeat(over))).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // The same connection still answers a normal check.
    let answered = health
        .check(check(identity_service::SERVICE_NAME.into()))
        .await;
    assert!(answered.is_ok(), "{answered:?}");
}

#[tokio::test]
async fn health_watch_is_not_served() {
    let env = support::start().await;
    let mut health = HealthClient::new(env.server.channel().await);
    let refused = health
        .watch(check(identity_service::SERVICE_NAME.into()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
}

#[tokio::test]
async fn reflection_refuses_an_oversized_host_and_still_describes_every_service() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};
    let env = support::start().await;
    let mut refl = ServerReflectionClient::new(env.server.channel().await);
    let ask = |host: String, symbol: &str| ServerReflectionRequest {
        host,
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let first = async |refl: &mut ServerReflectionClient<_>, req| {
        let mut answers = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await?
            .into_inner();
        answers.message().await
    };
    let over = service_runtime::open_services::REFLECTION_MAX_REQUEST;
    // tonic-reflection ends the stream, without an answer, at a request it cannot decode.
    let refused = first(&mut refl, ask("h".repeat(over), "grpc.health.v1.Health")).await;
    assert!(matches!(refused, Ok(None)), "{refused:?}");
    // The largest answers, a service's file with its imports, fit the answer's limit.
    for symbol in [
        identity_service::SERVICE_NAME,
        "vbase.workspace.v1.WorkspaceService",
        "vbase.ops.v1.DeliveryAdminService",
    ] {
        let answer: Option<ServerReflectionResponse> =
            first(&mut refl, ask(String::new(), symbol)).await.unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answer.and_then(|a| a.message_response)
        else {
            panic!("no descriptor for {symbol}")
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

fn quarantine(svix_id: &str, body: usize) -> ops::QuarantineDeliveryRequest {
    ops::QuarantineDeliveryRequest {
        svix_id: svix_id.into(),
        event_type: "user.updated".into(),
        reason: "r".repeat(delivery_ledger::quarantine::MAX_REASON),
        body: vec![b'{'; body],
    }
}

#[tokio::test]
async fn a_quarantined_body_of_1_mib_is_kept_and_a_larger_request_refused_unread() {
    let env = support::start().await;
    let mut intake = DeliveryIntakeServiceClient::new(env.server.channel().await);
    let gateway = |m| env.issuers.gateway("identity-service", m);
    let kept = intake
        .quarantine_delivery(gateway(quarantine(
            "msg_largest",
            delivery_ledger::quarantine::MAX_BODY,
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(kept.first && kept.open, "{kept:?}");
    let over = delivery_ledger::grpc::INTAKE_MAX_REQUEST;
    let refused = intake
        .quarantine_delivery(gateway(quarantine("msg_over", over)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
}

fn command(n: usize, image_url: String) -> pb::UpsertUserCommand {
    pb::UpsertUserCommand {
        event_id: format!("evt_bounds_{n}"),
        occurred_at: support::ts(1_700_000_000),
        clerk_id: format!("user_bounds_{n}"),
        name: "N".repeat(256),
        email: format!("u{n}@example.com"),
        image_url,
        created_at: support::ts(1_700_000_000),
        ..Default::default()
    }
}

async fn upsert_many(
    env: &Env,
    commands: Vec<pb::UpsertUserCommand>,
) -> Result<Vec<i32>, tonic::Status> {
    let mut c = env.client().await;
    let r = c
        .upsert_users(env.service(pb::UpsertUsersCommand { commands }))
        .await?;
    Ok(r.into_inner().results.iter().map(|r| r.code).collect())
}

#[tokio::test]
async fn a_batch_with_one_command_as_large_as_a_webhook_decodes_and_a_larger_batch_is_refused() {
    let env = support::start().await;
    let url = |n: usize| format!("https://img.clerk.com/{}", "i".repeat(n));
    // 63 valid commands and one copied from a 1 MiB webhook body: only that one is refused.
    let mut batch: Vec<_> = (0..63).map(|n| command(n, url(2000))).collect();
    batch.push(command(63, url(delivery_ledger::quarantine::MAX_BODY)));
    let codes = upsert_many(&env, batch).await.unwrap();
    assert_eq!(codes.len(), 64);
    assert!(codes[..63].iter().all(|&c| c == 0), "{codes:?}");
    assert_eq!(codes[63], Code::InvalidArgument as i32);
    // Past the service's limit, the whole call is refused before it is decoded.
    let over = (0..3)
        .map(|n| command(100 + n, url(identity_service::MAX_REQUEST / 2)))
        .collect();
    let refused = upsert_many(&env, over).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
}
