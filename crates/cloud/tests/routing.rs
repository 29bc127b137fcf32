//! The routing session against real HTTP servers on 127.0.0.1: a cloud that works, and one fault
//! per test. Whatever the cloud does, the turn ends with an answer, the request carried exactly the
//! original conversation, and the caller's conversation is untouched.

#[path = "support/fault_server.rs"]
mod fault_server;
#[path = "../../core/tests/common/mod.rs"]
mod gguf;

use std::time::{Duration, Instant};

use candle_core::Device;
use fault_server::{Behaviour, FaultServer, refused_url};
use selfroute_candle::CandleModel;
use selfroute_cloud::{CloudConfig, HttpCloudClient};
use selfroute_core::{
    Assistant, ChatOutcome, CloudBudget, Control, GenerationParams, LocalReason, Message,
    ModelPackage, OffloadReason, OffloadSignal, RetryPolicy, Route, RouteEvent, RoutingConfig,
};

/// What a turn streamed, owned.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Local(String),
    Offload(OffloadReason),
    Cloud(String),
    CloudFailed(String),
    Declined(OffloadReason),
    Done,
}

struct Setup {
    url: String,
    retry: RetryPolicy,
    idle: Duration,
    offload_bias: f32,
    budget: CloudBudget,
}

impl Setup {
    fn new(url: String) -> Self {
        Self {
            url,
            retry: RetryPolicy::none(),
            idle: Duration::from_millis(500),
            // The tiny random model then always picks the offload token.
            offload_bias: 1000.0,
            budget: CloudBudget::unlimited(),
        }
    }

    fn build(self) -> Assistant<CandleModel, HttpCloudClient> {
        let package = ModelPackage::from_gguf(
            "tiny-offload.gguf",
            gguf::GgufBuilder::tiny_llama_with_offload(512).bytes(),
        )
        .expect("tiny model parses");
        let model = CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu)
            .expect("tiny model loads");
        let signal = OffloadSignal::from_tokenizer(&package.tokenizer, None).expect("signal");
        assert_eq!(signal.token_id, Some(3));
        let mut cloud = CloudConfig::new(self.url);
        cloud.retry = self.retry;
        cloud.idle_timeout = self.idle;
        cloud.connect_timeout = Duration::from_secs(2);
        let config = RoutingConfig {
            generation: GenerationParams {
                max_new_tokens: 12,
                // End-of-text would end the fallback answer before it starts.
                logit_bias: vec![(0, f32::NEG_INFINITY), (2, f32::NEG_INFINITY)],
                ..GenerationParams::default()
            },
            offload_bias: self.offload_bias,
            cloud_model: "cloud-model".into(),
            cloud_max_tokens: Some(64),
            ..RoutingConfig::default()
        };
        Assistant::new(
            model,
            package.tokenizer,
            package.chat_template.expect("template"),
            signal,
            Some(HttpCloudClient::new(cloud).expect("client")),
            config,
            self.budget,
        )
        .expect("assistant")
    }
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You are terse."),
        Message::user("What is 17 * 23?"),
        Message::assistant("391."),
        Message::user("And 391 / 17? <|offload|> is just text here."),
    ]
}

async fn turn(
    assistant: &mut Assistant<CandleModel, HttpCloudClient>,
    messages: &[Message],
) -> (ChatOutcome, Vec<Event>) {
    let mut events = Vec::new();
    let outcome = assistant
        .chat(messages, |event| {
            events.push(match event {
                RouteEvent::LocalText(t) => Event::Local(t.to_string()),
                RouteEvent::OffloadStarted { reason } => Event::Offload(reason),
                RouteEvent::CloudText(t) => Event::Cloud(t.to_string()),
                RouteEvent::CloudFailed { error } => Event::CloudFailed(error.to_string()),
                RouteEvent::OffloadDeclined { reason } => Event::Declined(reason),
                RouteEvent::Done(_) => Event::Done,
            });
            Control::Continue
        })
        .await
        .expect("the turn ends with an answer");
    (outcome, events)
}

fn local_text_after_failure(events: &[Event]) -> String {
    let failed = events
        .iter()
        .position(|e| matches!(e, Event::CloudFailed(_)))
        .expect("a CloudFailed event");
    events[failed..]
        .iter()
        .filter_map(|e| match e {
            Event::Local(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// The request the server saw carries exactly the caller's conversation.
fn assert_original_conversation(server: &FaultServer, messages: &[Message]) {
    let requests = server.requests();
    assert!(!requests.is_empty(), "the cloud was called");
    for r in &requests {
        let body = r.json();
        let sent: Vec<Message> =
            serde_json::from_value(body["messages"].clone()).expect("messages");
        assert_eq!(sent, messages);
        assert_eq!(body["model"], "cloud-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
    }
}

/// The fallback contract: a local answer marked cloud_unavailable, streamed after the failure
/// event, and the caller's conversation untouched.
fn assert_fallback(outcome: &ChatOutcome, events: &[Event], error_part: &str) {
    assert_eq!(outcome.route, Route::Fallback, "{outcome:?}");
    assert_eq!(outcome.local_reason, Some(LocalReason::CloudUnavailable));
    assert_eq!(outcome.offload_reason, Some(OffloadReason::Token));
    let error = outcome.cloud_error.as_deref().expect("error recorded");
    assert!(
        error.contains(error_part),
        "error `{error}` should mention `{error_part}`"
    );
    assert!(!outcome.answer.is_empty());
    assert_eq!(outcome.answer, local_text_after_failure(events));
    assert_eq!(events.last(), Some(&Event::Done));
    assert_eq!(outcome.cloud_tokens, 0);
    assert!(outcome.local_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_working_cloud_answers_with_the_original_conversation() {
    let server = FaultServer::start(vec![Behaviour::Stream(vec![
        "391 / 17 ".into(),
        "= 23.".into(),
    ])])
    .await;
    let mut assistant = Setup::new(server.url()).build();
    let messages = conversation();
    let before = messages.clone();
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_eq!(outcome.route, Route::Cloud);
    assert_eq!(outcome.answer, "391 / 17 = 23.");
    assert_eq!(outcome.offload_reason, Some(OffloadReason::Token));
    assert_eq!(outcome.cloud_tokens, 2);
    assert_eq!(outcome.cloud_attempts, 1);
    assert_eq!(
        outcome.cloud_bytes_sent,
        server.requests()[0].body.len() as u64
    );
    assert!(outcome.time_to_first_token_ms.is_some());
    assert!(outcome.latency_ms >= outcome.time_to_first_token_ms.unwrap());
    assert_eq!(
        events,
        vec![
            Event::Offload(OffloadReason::Token),
            Event::Cloud("391 / 17 ".into()),
            Event::Cloud("= 23.".into()),
            Event::Done
        ]
    );
    assert_eq!(messages, before);
    assert_original_conversation(&server, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_json_answer_to_a_stream_request_is_accepted() {
    let server = FaultServer::start(vec![Behaviour::Json("Twenty-three.".into())]).await;
    let mut assistant = Setup::new(server.url()).build();
    let (outcome, _) = turn(&mut assistant, &conversation()).await;
    assert_eq!(outcome.route, Route::Cloud);
    assert_eq!(outcome.answer, "Twenty-three.");
    assert_eq!(outcome.cloud_tokens, 3, "usage is reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn refused_connections_fall_back_after_bounded_retries() {
    let mut setup = Setup::new(refused_url().await);
    setup.retry = RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let mut assistant = setup.build();
    let messages = conversation();
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_fallback(&outcome, &events, "cannot reach");
    assert_eq!(outcome.cloud_attempts, 3);
    assert_eq!(messages, conversation());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn http_500_falls_back_with_the_server_message() {
    let server = FaultServer::start(vec![Behaviour::Status500]).await;
    let mut setup = Setup::new(server.url());
    setup.retry = RetryPolicy {
        max_retries: 1,
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let mut assistant = setup.build();
    let messages = conversation();
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_fallback(&outcome, &events, "the model crashed");
    assert_eq!(outcome.cloud_attempts, 2, "500 is retried once");
    assert_eq!(server.requests().len(), 2);
    assert_original_conversation(&server, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn http_429_waits_for_retry_after_then_succeeds() {
    let server = FaultServer::start(vec![
        Behaviour::TooMany {
            retry_after_secs: 1,
        },
        Behaviour::Stream(vec!["ok".into()]),
    ])
    .await;
    let mut setup = Setup::new(server.url());
    setup.retry = RetryPolicy::default();
    let mut assistant = setup.build();
    let started = Instant::now();
    let (outcome, _) = turn(&mut assistant, &conversation()).await;
    assert_eq!(outcome.route, Route::Cloud);
    assert_eq!(outcome.answer, "ok");
    assert_eq!(outcome.cloud_attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn http_429_beyond_the_retries_falls_back() {
    let server = FaultServer::start(vec![Behaviour::TooMany {
        retry_after_secs: 0,
    }])
    .await;
    let mut setup = Setup::new(server.url());
    setup.retry = RetryPolicy {
        max_retries: 2,
        ..RetryPolicy::default()
    };
    let mut assistant = setup.build();
    let messages = conversation();
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_fallback(&outcome, &events, "429");
    assert_eq!(outcome.cloud_attempts, 3);
    assert_original_conversation(&server, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_stall_past_the_idle_timeout_falls_back_and_voids_the_partial_answer() {
    let server = FaultServer::start(vec![Behaviour::StallMidStream { for_ms: 5_000 }]).await;
    let mut setup = Setup::new(server.url());
    setup.idle = Duration::from_millis(300);
    setup.retry = RetryPolicy::default();
    let mut assistant = setup.build();
    let started = Instant::now();
    let (outcome, events) = turn(&mut assistant, &conversation()).await;
    assert_fallback(&outcome, &events, "300 ms");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait for the stall"
    );
    assert!(events.contains(&Event::Cloud("Partial".into())));
    assert!(!outcome.answer.contains("Partial"));
    assert_eq!(outcome.cloud_attempts, 1, "no retry after text was shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_stall_before_the_headers_is_retried_then_falls_back() {
    let server = FaultServer::start(vec![Behaviour::StallBeforeHeaders { for_ms: 5_000 }]).await;
    let mut setup = Setup::new(server.url());
    setup.idle = Duration::from_millis(200);
    setup.retry = RetryPolicy {
        max_retries: 1,
        base_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let mut assistant = setup.build();
    let (outcome, events) = turn(&mut assistant, &conversation()).await;
    assert_fallback(&outcome, &events, "waiting for the response");
    assert_eq!(outcome.cloud_attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_connection_closed_mid_stream_falls_back() {
    let server = FaultServer::start(vec![Behaviour::CloseMidStream]).await;
    let mut assistant = Setup::new(server.url()).build();
    let messages = conversation();
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_fallback(&outcome, &events, "ended before it was complete");
    assert!(!outcome.answer.contains("Half an"));
    assert_original_conversation(&server, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_malformed_chunk_falls_back() {
    let server = FaultServer::start(vec![Behaviour::MalformedChunk]).await;
    let mut assistant = Setup::new(server.url()).build();
    let (outcome, events) = turn(&mut assistant, &conversation()).await;
    assert_fallback(&outcome, &events, "malformed stream chunk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_error_json_falls_back_with_the_provider_message() {
    let server = FaultServer::start(vec![Behaviour::ErrorJson]).await;
    let mut setup = Setup::new(server.url());
    setup.retry = RetryPolicy::default();
    let mut assistant = setup.build();
    let (outcome, events) = turn(&mut assistant, &conversation()).await;
    assert_fallback(&outcome, &events, "model `x` does not exist");
    assert_eq!(outcome.cloud_attempts, 1, "a 400 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_error_object_mid_stream_falls_back() {
    let server = FaultServer::start(vec![Behaviour::ErrorMidStream]).await;
    let mut assistant = Setup::new(server.url()).build();
    let (outcome, events) = turn(&mut assistant, &conversation()).await;
    assert_fallback(&outcome, &events, "upstream overloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_budget_caps_cloud_calls_over_every_window() {
    let server = FaultServer::start(vec![Behaviour::Stream(vec!["cloud".into()])]).await;
    let mut setup = Setup::new(server.url());
    setup.budget = CloudBudget::new(0.3, 10).unwrap();
    let mut assistant = setup.build();
    let mut routes = Vec::new();
    for _ in 0..25 {
        let (outcome, _) = turn(&mut assistant, &conversation()).await;
        if outcome.route == Route::Local {
            assert_eq!(outcome.local_reason, Some(LocalReason::BudgetExhausted));
            assert_eq!(outcome.offload_reason, None, "offload was masked");
        }
        routes.push(outcome.route == Route::Cloud);
    }
    for window in routes.windows(10) {
        assert!(window.iter().filter(|&&c| c).count() <= 3, "{routes:?}");
    }
    assert_eq!(routes.iter().take(10).filter(|&&c| c).count(), 3);
    assert_eq!(
        server.requests().len(),
        routes.iter().filter(|&&c| c).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_negative_bias_keeps_answers_local_and_typed_markers_do_nothing() {
    let server = FaultServer::start(vec![Behaviour::Stream(vec!["cloud".into()])]).await;
    let mut setup = Setup::new(server.url());
    setup.offload_bias = -1000.0;
    let mut assistant = setup.build();
    let messages = vec![Message::user(format!(
        "<|offload|> {} <|offload|>",
        selfroute_core::DEFAULT_OFFLOAD_MARKER
    ))];
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_eq!(outcome.route, Route::Local);
    assert_eq!(outcome.local_reason, None);
    assert!(server.requests().is_empty());
    let shown: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Local(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(shown, outcome.answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn stopping_during_the_cloud_answer_cancels_the_call() {
    let server = FaultServer::start(vec![Behaviour::StallMidStream { for_ms: 5_000 }]).await;
    let mut setup = Setup::new(server.url());
    setup.idle = Duration::from_secs(10);
    let mut assistant = setup.build();
    let started = Instant::now();
    let outcome = assistant
        .chat(&conversation(), |event| match event {
            RouteEvent::CloudText(_) => Control::Stop,
            _ => Control::Continue,
        })
        .await
        .expect("turn");
    assert!(outcome.cancelled);
    assert_eq!(outcome.route, Route::Cloud);
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// SmolLM2 on the device with prompt-only routing, on a marker it produces for this question.
fn smollm2_assistant(
    url: String,
    send_local_draft: bool,
) -> Assistant<CandleModel, HttpCloudClient> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-model`", path.display()));
    let package = ModelPackage::from_gguf(path.display().to_string(), bytes).expect("SmolLM2");
    let model = CandleModel::load(&package.config, package.weights.as_ref(), &Device::Cpu)
        .expect("SmolLM2 loads");
    let signal =
        OffloadSignal::from_tokenizer(&package.tokenizer, Some("Tour de France was won by".into()))
            .expect("signal");
    let config = RoutingConfig {
        generation: GenerationParams {
            max_new_tokens: 24,
            ..GenerationParams::default()
        },
        offload_instruction: Some(selfroute_core::assistant::default_offload_instruction()),
        send_local_draft,
        cloud_model: "cloud-model".into(),
        cloud_max_tokens: Some(64),
        ..RoutingConfig::default()
    };
    Assistant::new(
        model,
        package.tokenizer,
        package.chat_template.expect("template"),
        signal,
        Some(HttpCloudClient::new(CloudConfig::new(url)).expect("client")),
        config,
        CloudBudget::unlimited(),
    )
    .expect("assistant")
}

fn smollm2_conversation() -> Vec<Message> {
    vec![
        Message::system("You are a helpful assistant."),
        Message::user("Who won the 1987 Tour de France?"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_marker_instruction_stays_local_and_the_cloud_gets_the_conversation_as_it_was() {
    let server = FaultServer::start(vec![Behaviour::Stream(vec!["Stephen Roche.".into()])]).await;
    let mut assistant = smollm2_assistant(server.url(), false);
    let messages = smollm2_conversation();
    let (outcome, events) = turn(&mut assistant, &messages).await;
    assert_eq!(outcome.route, Route::Cloud, "{outcome:?}");
    assert_eq!(outcome.offload_reason, Some(OffloadReason::Marker));
    assert_eq!(outcome.answer, "Stephen Roche.");
    // Text before the marker was shown as a draft; no part of the marker ever was.
    let draft: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Local(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(draft, "The 1987 ");
    // The system message reached the cloud without the offload instruction.
    assert_original_conversation(&server, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_local_draft_is_sent_only_when_asked() {
    let server = FaultServer::start(vec![Behaviour::Stream(vec!["Stephen Roche.".into()])]).await;
    let mut assistant = smollm2_assistant(server.url(), true);
    let messages = smollm2_conversation();
    let (outcome, _) = turn(&mut assistant, &messages).await;
    assert_eq!(outcome.route, Route::Cloud);
    let body = server.requests()[0].json();
    let sent: Vec<Message> = serde_json::from_value(body["messages"].clone()).unwrap();
    assert_eq!(sent[..2], messages[..]);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].role, selfroute_core::Role::System);
    assert!(sent[2].content.ends_with("The 1987 "), "{:?}", sent[2]);
}

/// A gate that says no, counting how often it was asked.
struct Decline {
    asked: Vec<OffloadReason>,
}

impl selfroute_core::OffloadGate for Decline {
    async fn approve(&mut self, reason: OffloadReason) -> bool {
        self.asked.push(reason);
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_declined_offload_is_answered_on_device_and_sends_nothing() {
    let server = FaultServer::start(vec![Behaviour::Stream(vec!["never".into()])]).await;
    let mut setup = Setup::new(server.url());
    setup.budget = CloudBudget::new(0.5, 2).expect("budget");
    let mut assistant = setup.build();
    let messages = conversation();
    let mut gate = Decline { asked: Vec::new() };
    let mut events = Vec::new();
    let outcome = assistant
        .chat_gated(&messages, &mut gate, |event| {
            if let RouteEvent::OffloadDeclined { reason } = event {
                events.push(Event::Declined(reason));
            }
            Control::Continue
        })
        .await
        .expect("answered");
    assert_eq!(gate.asked, vec![OffloadReason::Token]);
    assert_eq!(events, vec![Event::Declined(OffloadReason::Token)]);
    assert_eq!(outcome.route, Route::Local);
    assert_eq!(outcome.local_reason, Some(LocalReason::OffloadDeclined));
    assert_eq!(outcome.offload_reason, Some(OffloadReason::Token));
    assert!(!outcome.answer.is_empty(), "the device answered");
    assert_eq!(outcome.cloud_attempts, 0);
    assert!(server.requests().is_empty(), "nothing left the device");
    // A declined offload is not a cloud call: the budget (1 of 2) still allows the next one.
    assert_eq!(assistant.budget().calls_in_window(), 0);
}
