//! The EC2 provider against moto's EC2 server on 127.0.0.1 (`scripts/test` installs it and sets
//! `TANDEM_MOTO_SERVER`): real `RunInstances`, `DescribeInstances` and `TerminateInstances`
//! requests through the SDK, answered by a real implementation of the EC2 API.
//!
//! moto does not honour `ClientToken` or `MaxCount`, changes instance states at once and never
//! runs user-data: the provider's unit tests cover those against a fake.
//!
//! The scenarios run in a child process with dummy AWS credentials (`common/moto.rs`, shared with
//! the coordinator's test of the leader's autoscaler against moto).
#![cfg(feature = "aws")]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{HttpTokensState, InstanceAttributeName, InstanceMetadataEndpointState};
use deploy::provider::ec2::launch::{CLUSTER_TAG, LAUNCH_TOKEN_TAG, ROLE_TAG, VOTER_ID_TAG, find_access_key_id};
use deploy::provider::ec2::{Ec2Options, Ec2Provider};
use deploy::provider::{Provider, ProviderErrorKind};

#[path = "common/moto.rs"]
mod moto;

use moto::{DUMMY_SECRET_ACCESS_KEY, INSTANCE_PROFILE, REGION, World};

const TEST_NAME: &str = "ec2_provider_against_moto";
const CLUSTER_SECRET: &str = "cluster-secret-0123456789abcdef";
/// A join secret, as the leader would make one for a launch.
const JOIN: &str = "tandem-join-fedcba9876543210fedcba9876543210";
/// Not the default (8090), to show the setting reaches the script and the raft address.
const WITNESS_PORT: u16 = 8097;

#[test]
fn ec2_provider_against_moto() {
    let Some(moto_server) = moto::in_child_with_dummy_credentials(TEST_NAME) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(scenarios(&moto_server));
}

/// The options of cluster `cluster` in `world`.
fn world_options(world: &World, cluster: &str) -> Ec2Options {
    options(&world.moto.url, cluster, &world.ami, Some(&world.subnet), std::slice::from_ref(&world.security_group))
}

async fn cluster_provider(world: &World, cluster: &str) -> Ec2Provider {
    Ec2Provider::new(&world_options(world, cluster), Some(CLUSTER_SECRET.into()), None).await.expect("provider")
}

fn options(url: &str, cluster: &str, ami: &str, subnet: Option<&str>, groups: &[String]) -> Ec2Options {
    Ec2Options {
        cluster_name: Some(cluster.into()),
        ami: Some(ami.into()),
        instance_type: "c7i.large".into(),
        subnet: subnet.map(str::to_owned),
        security_groups: groups.to_vec(),
        instance_profile: Some(INSTANCE_PROFILE.into()),
        region: Some(REGION.into()),
        endpoint_url: Some(url.into()),
        worker_binary: "/opt/tandem/bin/worker".into(),
        worker_binary_sha256: None,
        coordinators: vec!["http://10.7.1.10:8080".into(), "http://10.7.1.11:8080".into()],
        worker_give_up_after_ms: 900_000,
        witness_port: WITNESS_PORT,
    }
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis()).expect("ms")
}

async fn scenarios(moto_server: &Path) {
    let world = World::set_up(moto_server).await;
    println!("scenario: a launch carries everything");
    a_launch_carries_the_tags_settings_and_user_data(&world).await;
    println!("scenario: list shows exactly the cluster's workers, terminate only touches them");
    list_and_terminate_see_only_the_clusters_workers(&world).await;
    println!("scenario: a new leader finds its predecessor's launch by its tag");
    a_new_leader_adopts_the_launch_instead_of_launching_again(&world).await;
    println!("scenario: a witness is a tagged worker whose voter listens on its private IP");
    a_witness_is_a_tagged_worker_whose_voter_listens_on_its_private_ip(&world).await;
    println!("scenario: misconfiguration is refused, and classified");
    misconfiguration_is_refused_and_classified(&world).await;
    println!("every scenario passed");
}

async fn a_launch_carries_the_tags_settings_and_user_data(world: &World) {
    let provider = cluster_provider(world, "blue").await;
    let before_ms = now_ms();
    let instance = provider.launch("blue-1", JOIN).await.expect("launch");
    assert_eq!(instance.token.as_deref(), Some("blue-1"));
    let launched_at = instance.launched_at_ms.expect("launch time");
    assert!(launched_at + 5_000 >= before_ms && launched_at <= now_ms() + 5_000, "launched at {launched_at}");

    let described = world.describe(&instance.instance_id).await;
    let tag = |key: &str| described.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
    assert_eq!(tag(CLUSTER_TAG), Some("blue"));
    assert_eq!(tag(ROLE_TAG), Some("worker"));
    assert_eq!(tag(LAUNCH_TOKEN_TAG), Some("blue-1"));
    assert_eq!(described.instance_type().map(|t| t.as_str()), Some("c7i.large"));
    assert_eq!(described.image_id(), Some(world.ami.as_str()));
    assert_eq!(described.subnet_id(), Some(world.subnet.as_str()));
    let groups: Vec<_> = described.security_groups().iter().filter_map(|g| g.group_id()).collect();
    assert_eq!(groups, vec![world.security_group.as_str()]);
    let profile = described.iam_instance_profile().and_then(|p| p.arn()).expect("an instance profile");
    assert!(profile.ends_with(&format!(":instance-profile/{INSTANCE_PROFILE}")), "{profile}");
    let metadata = described.metadata_options().expect("metadata options");
    assert_eq!(metadata.http_tokens(), Some(&HttpTokensState::Required));
    assert_eq!(metadata.http_endpoint(), Some(&InstanceMetadataEndpointState::Enabled));

    let attribute = |name: InstanceAttributeName| {
        world.sdk.describe_instance_attribute().instance_id(&instance.instance_id).attribute(name).send()
    };
    let shutdown = attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior).await.expect("attribute");
    assert_eq!(shutdown.instance_initiated_shutdown_behavior().and_then(|v| v.value()), Some("terminate"));
    let user_data = attribute(InstanceAttributeName::UserData).await.expect("attribute");
    let encoded = user_data.user_data().and_then(|v| v.value()).expect("user-data");
    let script = String::from_utf8(aws_smithy_types::base64::decode(encoded).expect("base64")).expect("utf-8");
    let rendered = provider.worker_launch().request("blue-1", JOIN).expect("the same launch").user_data;
    assert_eq!(script, rendered, "user-data is the rendered script");
    assert!(script.contains("TANDEM_LAUNCH_TOKEN=blue-1\n"));
    assert!(script.contains("TANDEM_COORDINATORS=http://10.7.1.10:8080,http://10.7.1.11:8080\n"));
    assert!(script.contains(&format!("TANDEM_JOIN_TOKEN={JOIN}\n")), "the worker's one-time join secret");
    assert!(!script.contains(CLUSTER_SECRET) && !script.contains("TANDEM_CLUSTER_SECRET"), "never the cluster secret");
    assert_eq!(find_access_key_id(&script), None, "no access key id in user-data");
    assert!(!script.contains(DUMMY_SECRET_ACCESS_KEY) && !script.contains("AWS_"), "no AWS credential in user-data");
    for tag in described.tags() {
        let text = format!("{:?}={:?}", tag.key(), tag.value());
        assert!(find_access_key_id(&text).is_none() && !text.contains(DUMMY_SECRET_ACCESS_KEY), "{text}");
    }
}

async fn list_and_terminate_see_only_the_clusters_workers(world: &World) {
    let provider = cluster_provider(world, "green").await;
    let first = provider.launch("green-1", JOIN).await.expect("launch");
    let second = provider.launch("green-2", JOIN).await.expect("launch");
    let other_cluster = world.launch_directly(&[(CLUSTER_TAG, "red"), (ROLE_TAG, "worker")]).await;
    let coordinator = world.launch_directly(&[(CLUSTER_TAG, "green"), (ROLE_TAG, "coordinator")]).await;
    let untagged = world.launch_directly(&[]).await;

    let mut listed: Vec<_> =
        provider.list().await.expect("list").into_iter().map(|i| (i.instance_id, i.token)).collect();
    listed.sort();
    let mut expected = vec![
        (first.instance_id.clone(), Some("green-1".to_owned())),
        (second.instance_id.clone(), Some("green-2".to_owned())),
    ];
    expected.sort();
    assert_eq!(listed, expected, "exactly the cluster's workers");

    for foreign in [&other_cluster, &coordinator, &untagged] {
        let error = provider.terminate(foreign).await.expect_err("not this cluster's worker");
        assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
        assert_ne!(world.state(foreign).await, "terminated", "{foreign} survives");
    }

    provider.terminate(&first.instance_id).await.expect("terminate");
    let state = world.state(&first.instance_id).await;
    assert!(state == "shutting-down" || state == "terminated", "{state}");
    let listed: Vec<_> = provider.list().await.expect("list").into_iter().map(|i| i.instance_id).collect();
    assert_eq!(listed, vec![second.instance_id.clone()], "a terminated worker is not listed");
    provider.terminate(&first.instance_id).await.expect("terminating it again succeeds");
    provider.terminate("i-0123456789abcdef0").await.expect("terminating an unknown instance succeeds");
}

async fn a_new_leader_adopts_the_launch_instead_of_launching_again(world: &World) {
    let old_leader = cluster_provider(world, "handover").await;
    let launched = old_leader.launch("handover-T", JOIN).await.expect("launch");
    drop(old_leader); // the leader dies right after RunInstances, before it records the instance

    let new_leader = cluster_provider(world, "handover").await;
    let listed = new_leader.list().await.expect("list");
    let found = listed.iter().find(|i| i.token.as_deref() == Some("handover-T")).expect("found by its token tag");
    assert_eq!(found.instance_id, launched.instance_id);
    // Repeating the launch (as a new leader does with a committed launch it cannot account
    // for) finds the instance by its tag; moto ignores ClientToken, so only the tag can.
    let again = new_leader.launch("handover-T", JOIN).await.expect("launch again");
    assert_eq!(again.instance_id, launched.instance_id);
    assert_eq!(world.all_tagged("handover").await.len(), 1, "one instance for one token");
}

async fn a_witness_is_a_tagged_worker_whose_voter_listens_on_its_private_ip(world: &World) {
    let provider = cluster_provider(world, "witness").await;
    let witness = provider.launch_witness("witness-W", 4, JOIN).await.expect("witness launch");
    let instance_id = &witness.instance.instance_id;
    assert_eq!(witness.instance.token.as_deref(), Some("witness-W"));

    let described = world.describe(instance_id).await;
    let tag = |key: &str| described.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
    assert_eq!(tag(CLUSTER_TAG), Some("witness"));
    assert_eq!(tag(ROLE_TAG), Some("worker"), "a witness is this cluster's worker");
    assert_eq!(tag(VOTER_ID_TAG), Some("4"));
    assert_eq!(tag(LAUNCH_TOKEN_TAG), Some("witness-W"));
    let ip = described.private_ip_address().expect("a private IP");
    assert!(ip.starts_with("10.7.1."), "{ip} is in the workers' subnet");
    assert_eq!(witness.raft_addr, format!("{ip}:{WITNESS_PORT}"));

    let user_data = world
        .sdk
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("attribute");
    let encoded = user_data.user_data().and_then(|v| v.value()).expect("user-data");
    let script = String::from_utf8(aws_smithy_types::base64::decode(encoded).expect("base64")).expect("utf-8");
    let rendered = provider.worker_launch().request_witness("witness-W", 4, JOIN).expect("the same launch").user_data;
    assert_eq!(script, rendered, "user-data is the rendered witness script");
    for line in [
        "TANDEM_WITNESS=true\n".to_owned(),
        "TANDEM_WITNESS_ID=4\n".to_owned(),
        format!("TANDEM_WITNESS_LISTEN=0.0.0.0:{WITNESS_PORT}\n"),
        "TANDEM_WITNESS_DATA_DIR=/var/lib/tandem/witness\n".to_owned(),
        "TANDEM_LAUNCH_TOKEN=witness-W\n".to_owned(),
        format!("TANDEM_JOIN_TOKEN={JOIN}\n"),
        "StateDirectory=tandem\n".to_owned(),
    ] {
        assert!(script.contains(&line), "{line:?} in the witness's user-data");
    }
    assert!(!script.contains(CLUSTER_SECRET), "never the cluster secret");
    assert_eq!(find_access_key_id(&script), None, "no access key id in user-data");
    assert!(!script.contains(DUMMY_SECRET_ACCESS_KEY) && !script.contains("AWS_"), "no AWS credential in user-data");

    // Listed as the cluster's worker; a repeated launch (a new leader carrying on) finds it by
    // its tag and answers the same address; it can be terminated, as a failed replacement's is.
    let listed: Vec<_> = provider.list().await.expect("list").into_iter().map(|i| i.instance_id).collect();
    assert_eq!(listed, vec![instance_id.clone()]);
    let again =
        cluster_provider(world, "witness").await.launch_witness("witness-W", 4, JOIN).await.expect("launch again");
    assert_eq!(again, witness);
    assert_eq!(world.all_tagged("witness").await.len(), 1, "one instance for one token");
    provider.terminate(instance_id).await.expect("terminate");
    let state = world.state(instance_id).await;
    assert!(state == "shutting-down" || state == "terminated", "{state}");

    // The AWS-key refusal holds for a witness's script too: nothing is launched.
    let provider = cluster_provider(world, "witness-refused").await;
    let key_id = ["AKIA", "TESTONLY0000000F"].concat();
    let error = provider.launch_witness("witness-R", 5, &key_id).await.expect_err("a key id in user-data");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(error.message.contains("access key id"), "{error}");
    assert!(world.all_tagged("witness-refused").await.is_empty(), "no instance was launched");
}

async fn misconfiguration_is_refused_and_classified(world: &World) {
    // moto checks subnets, not AMIs.
    let mut unknown_subnet = world_options(world, "misconfigured");
    unknown_subnet.subnet = Some("subnet-00000000deadbeef0".into());
    let provider = Ec2Provider::new(&unknown_subnet, None, None).await.expect("provider");
    let error = provider.launch("m-1", JOIN).await.expect_err("an unknown subnet");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(error.message.contains("InvalidSubnetID"), "{error}");

    // A cluster secret that is this process's AWS secret key never reaches EC2: the cluster
    // secret is not in a worker's user-data at all.
    let provider = Ec2Provider::new(&world_options(world, "secretive"), Some(DUMMY_SECRET_ACCESS_KEY.into()), None)
        .await
        .expect("provider");
    let launched = provider.launch("s-1", JOIN).await.expect("launch");
    let script = world.user_data(&launched.instance_id).await;
    assert!(!script.contains(DUMMY_SECRET_ACCESS_KEY) && script.contains(JOIN), "{script}");
    provider.terminate(&launched.instance_id).await.expect("terminate");
    // A join secret that holds the cluster secret, or looks like an access key id, is refused.
    let provider = cluster_provider(world, "misconfigured").await;
    let error = provider.launch("m-2", &format!("x-{CLUSTER_SECRET}")).await.expect_err("the cluster secret");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(error.message.contains("cluster secret"), "{error}");
    let error = provider.launch("m-3", &["AKIA", "TESTONLY0000000D"].concat()).await.expect_err("a key id");
    assert_eq!(error.kind, ProviderErrorKind::Configuration, "{error}");
    assert!(world.all_tagged("misconfigured").await.is_empty(), "no instance was launched");

    // TLS through the provider's own client (rustls, the system's roots): speaking it to moto's
    // plain-http port fails the handshake, as an error of its own kind, without hanging.
    let tls =
        Ec2Options { endpoint_url: Some(world.moto.url.replace("http://", "https://")), ..world_options(world, "x") };
    let provider = Ec2Provider::new(&tls, None, None).await.expect("provider");
    let error = provider.list().await.expect_err("no TLS on moto's port");
    assert_eq!(error.kind, ProviderErrorKind::Other, "{error}");
    assert!(error.message.contains("InvalidContentType"), "rustls read moto's plain http: {error}");

    let missing = Ec2Options { cluster_name: None, ..world_options(world, "x") };
    let error = Ec2Provider::new(&missing, None, None).await.expect_err("no cluster name");
    assert_eq!(error.kind, ProviderErrorKind::Configuration);
}
