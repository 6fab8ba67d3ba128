//! The provider against the fake EC2: what moto cannot show.

use std::sync::Arc;

use super::client::Ec2CallError;
use super::fake_client::FakeEc2;
use super::launch::{
    CLUSTER_TAG, DEFAULT_WITNESS_PORT, DEFAULT_WORKER_BINARY, LAUNCH_TOKEN_TAG, ROLE_TAG, VOTER_ID_TAG, WorkerBinary,
};
use super::*;
use crate::provider::ec2::launch::tests::JOIN;

fn worker_launch() -> WorkerLaunch {
    WorkerLaunch {
        cluster_name: "blue".into(),
        image_id: "ami-1".into(),
        instance_type: "c7i.large".into(),
        subnet_id: Some("subnet-1".into()),
        security_group_ids: vec!["sg-1".into()],
        instance_profile: None,
        coordinators: vec!["http://10.0.0.1:8080".into()],
        worker_binary: WorkerBinary::Path(DEFAULT_WORKER_BINARY.into()),
        give_up_after_ms: 900_000,
        witness_port: DEFAULT_WITNESS_PORT,
        cluster_secret: Some("the-cluster-secret-of-blue".into()),
        aws_secret_access_key: None,
    }
}

fn provider() -> Ec2Provider<Arc<FakeEc2>> {
    Ec2Provider::with_client(worker_launch(), Arc::default())
}

fn fake(provider: &Ec2Provider<Arc<FakeEc2>>) -> &FakeEc2 {
    provider.client()
}

fn call_error(code: &str) -> Ec2CallError {
    Ec2CallError { code: Some(code.into()), message: format!("{code}: said EC2") }
}

#[tokio::test]
async fn a_launch_sends_the_worker_launch_with_the_token_as_client_token() {
    let provider = provider();
    let instance = provider.launch("t1", JOIN).await.expect("launch");
    assert_eq!(instance.token.as_deref(), Some("t1"));
    assert!(instance.launched_at_ms.is_some());
    let sent = fake(&provider).with(|s| s.run_requests.clone());
    assert_eq!(sent, vec![worker_launch().request("t1", JOIN).expect("valid launch")]);
    assert_eq!(sent[0].client_token, "t1");
    // The worker gets its join secret, never the cluster secret.
    assert!(sent[0].user_data.contains(&format!("\nTANDEM_JOIN_TOKEN={JOIN}\n")), "{}", sent[0].user_data);
    assert!(!sent[0].user_data.contains("the-cluster-secret-of-blue"));
}

#[tokio::test]
async fn a_retried_launch_returns_the_first_instance_by_client_token() {
    // DescribeInstances does not show the new instance yet, so only ClientToken can tell: the
    // case of a leader that retries right after a timeout.
    let provider = provider();
    fake(&provider).with(|s| s.describe_lags = true);
    let first = provider.launch("t1", JOIN).await.expect("launch");
    let again = provider.launch("t1", JOIN).await.expect("retried launch");
    assert_eq!(first, again);
    assert_eq!(fake(&provider).started(), 1, "one instance for one token");
    assert_eq!(fake(&provider).with(|s| s.run_requests.len()), 2, "the retry reached RunInstances");
    let other = provider.launch("t2", JOIN).await.expect("another launch");
    assert_ne!(other.instance_id, first.instance_id);
    assert_eq!(fake(&provider).started(), 2);
}

#[tokio::test]
async fn a_launch_adopts_the_instance_tagged_with_its_token() {
    // A new leader repeating its predecessor's launch: found by tag, no RunInstances at all.
    let first_leader = provider();
    let first = first_leader.launch("t1", JOIN).await.expect("launch");
    let new_leader = Ec2Provider::with_client(worker_launch(), Arc::clone(first_leader.client()));
    let again = new_leader.launch("t1", JOIN).await.expect("launch again");
    assert_eq!(again.instance_id, first.instance_id);
    assert_eq!(fake(&new_leader).with(|s| s.run_requests.len()), 1, "only the first leader's RunInstances");
}

#[tokio::test]
async fn a_launch_with_no_instance_started_is_an_error_not_a_panic() {
    let provider = provider();
    fake(&provider).with(|s| s.start_nothing = true);
    let error = provider.launch("t1", JOIN).await.expect_err("nothing started");
    assert_eq!(error.kind, ProviderErrorKind::Capacity);
    assert!(error.message.contains("partial fulfilment"), "{error}");
    assert!(provider.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn launch_errors_keep_their_kind() {
    let cases = [
        ("InsufficientInstanceCapacity", ProviderErrorKind::Capacity),
        ("VcpuLimitExceeded", ProviderErrorKind::Quota),
        ("InstanceLimitExceeded", ProviderErrorKind::Quota),
        ("MaxSpotInstanceCountExceeded", ProviderErrorKind::Quota),
        ("RequestLimitExceeded", ProviderErrorKind::Throttled),
        ("InvalidAMIID.NotFound", ProviderErrorKind::Configuration),
        ("InvalidSubnetID.NotFound", ProviderErrorKind::Configuration),
        ("InvalidGroup.NotFound", ProviderErrorKind::Configuration),
        ("InvalidParameterValue", ProviderErrorKind::Configuration),
        ("UnauthorizedOperation", ProviderErrorKind::Configuration),
        ("InternalError", ProviderErrorKind::Other),
    ];
    for (code, kind) in cases {
        let provider = provider();
        fake(&provider).with(|s| s.run_errors.push_back(call_error(code)));
        let error = provider.launch("t1", JOIN).await.expect_err(code);
        assert_eq!(error.kind, kind, "{code}");
        assert!(error.message.contains(code), "{error}");
        // The failed launch left nothing, and the next try goes through.
        assert_eq!(fake(&provider).started(), 0);
        provider.launch("t1", JOIN).await.expect("the retry");
        assert_eq!(fake(&provider).started(), 1);
    }
}

#[test]
fn error_codes_map_to_kinds() {
    let cases = [
        (None, ProviderErrorKind::Other),
        (Some("InsufficientInstanceCapacity"), ProviderErrorKind::Capacity),
        (Some("InsufficientHostCapacity"), ProviderErrorKind::Capacity),
        (Some("VcpuLimitExceeded"), ProviderErrorKind::Quota),
        (Some("InstanceLimitExceeded"), ProviderErrorKind::Quota),
        (Some("MaxSpotInstanceCountExceeded"), ProviderErrorKind::Quota),
        (Some("RequestLimitExceeded"), ProviderErrorKind::Throttled),
        (Some("Throttling"), ProviderErrorKind::Throttled),
        (Some("InvalidAMIID.Malformed"), ProviderErrorKind::Configuration),
        (Some("InvalidSubnetID.NotFound"), ProviderErrorKind::Configuration),
        (Some("InvalidGroup.NotFound"), ProviderErrorKind::Configuration),
        (Some("InvalidParameterValue"), ProviderErrorKind::Configuration),
        (Some("UnauthorizedOperation"), ProviderErrorKind::Configuration),
        (Some("AuthFailure"), ProviderErrorKind::Configuration),
        (Some("InvalidInstanceID.NotFound"), ProviderErrorKind::Other),
        (Some("InternalError"), ProviderErrorKind::Other),
        (Some("Unavailable"), ProviderErrorKind::Other),
    ];
    for (code, kind) in cases {
        assert_eq!(classify(code), kind, "{code:?}");
    }
}

#[tokio::test]
async fn a_launch_whose_user_data_holds_an_aws_key_or_the_cluster_secret_never_reaches_ec2() {
    let provider = provider();
    let key_id = super::launch::tests::key_shaped("ASIA", "TESTONLY0000000C");
    let error = provider.launch("t1", &key_id).await.expect_err("refused");
    assert_eq!(error.kind, ProviderErrorKind::Configuration);
    let error = provider.launch("t1", "the-cluster-secret-of-blue").await.expect_err("refused");
    assert!(error.message.contains("cluster secret"), "{error}");
    assert_eq!(fake(&provider).with(|s| (s.run_requests.len(), s.describe_calls)), (0, 0));
}

#[tokio::test]
async fn list_shows_this_clusters_live_workers_over_every_page() {
    let provider = provider();
    fake(&provider).with(|s| s.page_size = 2);
    let mut launched = Vec::new();
    for token in ["t1", "t2", "t3", "t4", "t5"] {
        launched.push(provider.launch(token, JOIN).await.expect("launch"));
    }
    let other_cluster =
        fake(&provider).add_instance(&[(CLUSTER_TAG, "green"), (ROLE_TAG, "worker"), (LAUNCH_TOKEN_TAG, "t9")], 1);
    let coordinator = fake(&provider).add_instance(&[(CLUSTER_TAG, "blue"), (ROLE_TAG, "coordinator")], 2);
    let untagged = fake(&provider).add_instance(&[], 3);
    provider.terminate(&launched[1].instance_id).await.expect("terminate");
    fake(&provider).with(|s| {
        let i = s.instances.iter_mut().find(|i| i.description.instance_id == launched[2].instance_id).expect("t3");
        i.description.state = Some("shutting-down".into());
    });

    let listed = provider.list().await.expect("list");
    let expected: Vec<Instance> = [0, 3, 4].iter().map(|&i| launched[i].clone()).collect();
    assert_eq!(listed, expected);
    assert!(listed.iter().all(|i| ![&other_cluster, &coordinator, &untagged].contains(&&i.instance_id)));
    assert!(fake(&provider).with(|s| s.describe_calls) >= 2, "more than one page was read");
}

#[tokio::test]
async fn terminate_refuses_instances_that_are_not_this_clusters_workers() {
    let provider = provider();
    let other_cluster = fake(&provider).add_instance(&[(CLUSTER_TAG, "green"), (ROLE_TAG, "worker")], 1);
    let coordinator = fake(&provider).add_instance(&[(CLUSTER_TAG, "blue"), (ROLE_TAG, "coordinator")], 2);
    let untagged = fake(&provider).add_instance(&[], 3);
    for id in [&other_cluster, &coordinator, &untagged] {
        let error = provider.terminate(id).await.expect_err("not ours");
        assert_eq!(error.kind, ProviderErrorKind::Configuration);
        assert!(error.message.contains("refusing to terminate"), "{error}");
        assert_eq!(fake(&provider).state_of(id).as_deref(), Some("running"));
    }
    assert!(fake(&provider).with(|s| s.terminate_calls.is_empty()), "TerminateInstances never called");
}

#[tokio::test]
async fn terminating_an_unknown_or_terminated_instance_succeeds() {
    let provider = provider();
    provider.terminate("i-00000000000000999").await.expect("unknown instance");
    let instance = provider.launch("t1", JOIN).await.expect("launch");
    provider.terminate(&instance.instance_id).await.expect("terminate");
    assert_eq!(fake(&provider).state_of(&instance.instance_id).as_deref(), Some("terminated"));
    provider.terminate(&instance.instance_id).await.expect("terminate again");
    assert_eq!(fake(&provider).with(|s| s.terminate_calls.len()), 1, "the second one was a no-op");
    assert!(provider.list().await.expect("list").is_empty());
}

/// The private IP the fake gave `instance_id`.
fn private_ip_of(provider: &Ec2Provider<Arc<FakeEc2>>, instance_id: &str) -> String {
    fake(provider).with(|s| {
        let instance = s.instances.iter().find(|i| i.description.instance_id == instance_id).expect("an instance");
        instance.description.private_ip.clone().expect("a private IP")
    })
}

#[tokio::test]
async fn a_witness_launch_sends_the_witness_launch_and_answers_where_its_voter_listens() {
    let mut settings = worker_launch();
    settings.witness_port = 8095;
    let provider = Ec2Provider::with_client(settings.clone(), Arc::<FakeEc2>::default());
    let witness = provider.launch_witness("w1", 5, JOIN).await.expect("witness launch");
    assert_eq!(witness.instance.token.as_deref(), Some("w1"));
    let ip = private_ip_of(&provider, &witness.instance.instance_id);
    assert_eq!(witness.raft_addr, format!("{ip}:8095"));

    let sent = fake(&provider).with(|s| s.run_requests.clone());
    assert_eq!(sent, vec![settings.request_witness("w1", 5, JOIN).expect("valid witness launch")]);
    assert_eq!(sent[0].client_token, "w1");
    for line in [
        "TANDEM_WITNESS=true\n",
        "TANDEM_WITNESS_ID=5\n",
        "TANDEM_WITNESS_LISTEN=0.0.0.0:8095\n",
        "TANDEM_WITNESS_DATA_DIR=/var/lib/tandem/witness\n",
        "StateDirectory=tandem\n",
        &format!("TANDEM_JOIN_TOKEN={JOIN}\n"),
    ] {
        assert!(sent[0].user_data.contains(line), "{line:?} in the witness's user-data");
    }
    let tag = |key: &str| sent[0].tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(tag(VOTER_ID_TAG), Some("5"));
    assert_eq!(tag(ROLE_TAG), Some("worker"));
    assert_eq!(tag(CLUSTER_TAG), Some("blue"));

    // It is this cluster's worker: listed, and terminated if its replacement fails.
    assert_eq!(provider.list().await.expect("list"), vec![witness.instance.clone()]);
    provider.terminate(&witness.instance.instance_id).await.expect("terminate");
    assert_eq!(fake(&provider).state_of(&witness.instance.instance_id).as_deref(), Some("terminated"));
}

#[tokio::test]
async fn a_retried_witness_launch_returns_the_first_instance_and_raft_addr() {
    // By ClientToken: DescribeInstances does not show the first instance yet.
    let provider = provider();
    fake(&provider).with(|s| s.describe_lags = true);
    let first = provider.launch_witness("w1", 5, JOIN).await.expect("witness launch");
    let again = provider.launch_witness("w1", 5, JOIN).await.expect("retried witness launch");
    assert_eq!(first, again);
    assert_eq!(fake(&provider).started(), 1, "one instance for one token");

    // By its tag: a new leader carrying on its predecessor's launch, no RunInstances at all.
    let first_leader = self::provider();
    let first = first_leader.launch_witness("w2", 6, JOIN).await.expect("witness launch");
    let new_leader = Ec2Provider::with_client(worker_launch(), Arc::clone(first_leader.client()));
    let again = new_leader.launch_witness("w2", 6, JOIN).await.expect("witness launch again");
    assert_eq!(first, again);
    assert_eq!(fake(&new_leader).with(|s| s.run_requests.len()), 1, "only the first leader's RunInstances");
}

#[tokio::test]
async fn a_token_that_launched_something_else_does_not_pass_for_the_witness() {
    let provider = provider();
    provider.launch("t1", JOIN).await.expect("a plain worker");
    provider.launch_witness("w1", 5, JOIN).await.expect("a witness");
    for (token, node_id, what) in [("t1", 5, "a plain worker"), ("w1", 6, "another voter's witness")] {
        let error = provider.launch_witness(token, node_id, JOIN).await.expect_err(what);
        assert_eq!(error.kind, ProviderErrorKind::Other, "{what}");
        assert!(error.message.contains(&format!("not as the witness of voter {node_id}")), "{error}");
    }
    assert_eq!(fake(&provider).started(), 2, "nothing more launched");
}

#[tokio::test]
async fn a_witness_launch_answered_without_a_private_ip_describes_the_instance_for_it() {
    let provider = provider();
    fake(&provider).with(|s| s.run_answer_lacks_private_ip = true);
    let witness = provider.launch_witness("w1", 5, JOIN).await.expect("witness launch");
    let ip = private_ip_of(&provider, &witness.instance.instance_id);
    assert_eq!(witness.raft_addr, format!("{ip}:{DEFAULT_WITNESS_PORT}"));
    // One DescribeInstances for the token before the launch, one for the IP after.
    assert_eq!(fake(&provider).with(|s| s.describe_calls), 2);
}

#[tokio::test]
async fn a_witness_with_no_private_ip_is_an_error_after_a_bounded_wait() {
    let mut provider = provider();
    provider.private_ip_retry = std::time::Duration::from_millis(1);
    fake(&provider).with(|s| s.no_private_ip = true);
    let error = provider.launch_witness("w1", 5, JOIN).await.expect_err("no private IP");
    assert_eq!(error.kind, ProviderErrorKind::Other);
    assert!(error.message.contains("no private IPv4 address"), "{error}");
    assert_eq!(fake(&provider).with(|s| s.describe_calls), 1 + PRIVATE_IP_ATTEMPTS as usize);
}

#[tokio::test]
async fn a_witness_launch_whose_user_data_holds_an_aws_key_never_reaches_ec2() {
    let provider = provider();
    let key_id = super::launch::tests::key_shaped("AKIA", "TESTONLY0000000E");
    let error = provider.launch_witness("w1", 5, &key_id).await.expect_err("refused");
    assert_eq!(error.kind, ProviderErrorKind::Configuration);
    assert!(error.message.contains("access key id"), "{error}");
    assert_eq!(fake(&provider).with(|s| (s.run_requests.len(), s.describe_calls)), (0, 0));
}
